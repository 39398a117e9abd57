"""The ``gfm`` command line: a thin shell that loads settings, calls the library and prints with rich.

Every command takes ``--params`` (default ``params.yaml``) and repeatable ``--set key=value``
overrides; bad settings print ``params.yaml: <key>: <problem>`` and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from gfm.config import Settings, SettingsError, load_settings

app = typer.Typer(
    help="Gradient Flow Matching: learn how training moves weights and forecast where a run ends.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
data_app = typer.Typer(help="Trajectory datasets: import, validate, summarise, version.")
app.add_typer(data_app, name="data")
stack_app = typer.Typer(
    help="A local team stack on loopback: MLflow on PostgreSQL, optionally Prefect (docs/team.md)."
)
app.add_typer(stack_app, name="stack")
console = Console()

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="Settings file.", show_default=True)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting: `--set data.seeds=8` (repeatable)."),
]


def _settings(params: Path, overrides: list[str] | None) -> Settings:
    try:
        return load_settings(params, overrides or [])
    except SettingsError as err:
        console.print(f"[red]Invalid settings[/red]\n{err}", highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    # no telemetry and no artifact progress bars from MLflow in a terminal's log
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.WARNING,  # other libraries: warnings only (Prefect logs on its own)
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    logging.getLogger("gfm").setLevel(logging.DEBUG if verbose else logging.INFO)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _summary_table(root: Path) -> Table:
    """Runs per task × optimizer, read from the dataset's runs table and manifest."""
    import polars as pl

    from gfm.data.trajectories import Trajectories

    ds = Trajectories(root)
    runs = ds.runs
    optimizers = sorted(runs["optimizer"].unique().to_list())
    counts = runs.group_by("task", "optimizer").len().sort("task", "optimizer")
    table = Table(title=f"Dataset {root}")
    table.add_column("task", no_wrap=True)
    for opt in optimizers:
        table.add_column(opt, justify="right")
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("ckpts", justify="right", no_wrap=True)
    for task in sorted(runs["task"].unique().to_list()):
        row = counts.filter(pl.col("task") == task)
        per = dict(zip(row["optimizer"].to_list(), row["len"].to_list(), strict=True))
        of_task = runs.filter(pl.col("task") == task)
        table.add_row(
            task,
            *[str(per.get(o, 0)) for o in optimizers],
            str(of_task["n_params"].max()),
            str(of_task["n_checkpoints"].sum()),
        )
    m = ds.manifest
    diverged = m.diverged if hasattr(m, "diverged") else []
    table.caption = (
        f"{len(runs)} runs kept, {len(diverged)} diverged and excluded, "
        f"{_size(root) / 2**20:.1f} MiB on disk, hash {m.hash[:16]}…"
    )
    return table


@app.command()
def generate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel processes or local Dask workers (default data.workers)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--dvc/--no-dvc", help="Version the dataset with `dvc add` + `dvc push`."),
    ] = True,
    summary: Annotated[
        Path | None, typer.Option(help="Also write the dataset summary as JSON here (DVC metrics).")
    ] = None,
) -> None:
    """Generate (or resume) the trajectory dataset described by `data` in params.yaml.

    Runs already in the dataset with the same settings are reused; the new dataset replaces the old
    one atomically. With `data.executor: dask` (team mode) the runs train on a Dask cluster:
    `data.dask_address`, or a local one of `data.workers` processes. Examples:

        gfm generate
        gfm generate --set data.seeds=8 --workers 2
        gfm generate --set data.executor=dask --set data.dask_address=tcp://10.0.0.5:8786
        gfm generate --no-dvc --summary reports/dataset.json   # as a DVC stage
    """
    from gfm import versioning
    from gfm.data.generate import generate as run_generation

    cfg = _settings(params, set_)
    if cfg.data.executor == "dask":  # Prefect's DaskTaskRunner: a local or an existing cluster
        from flows.generate import generate_on_dask

        if workers is not None:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": workers})})
        report = generate_on_dask(cfg.data)
    else:
        report = run_generation(cfg.data, workers=workers, progress=True)
    console.print(_summary_table(cfg.data.root))
    if report.diverged:
        console.print(
            f"[yellow]{len(report.diverged)} diverged run(s) excluded:[/yellow] "
            + ", ".join(f"{rid} (step {step})" for rid, step in report.diverged)
        )
    console.print(
        f"planned {report.planned}, reused {report.skipped}, trained {report.trained} "
        f"in {report.seconds:.1f} s"
    )
    if summary is not None:
        _write_summary(summary, cfg.data.root, report)
    if version and not versioning.inside_dvc_stage() and versioning.find_repo(cfg.data.root):
        md5 = versioning.add_and_push(cfg.data.root, cfg.data.remote)
        console.print(
            f"dataset version (data.dvc md5): [bold]{md5}[/bold], pushed to {cfg.data.remote}"
        )


def _write_summary(path: Path, root: Path, report: object) -> None:
    from gfm.data.io import atomic_write_bytes
    from gfm.data.trajectories import Trajectories

    ds = Trajectories(root)
    doc = {
        "runs": len(ds.runs),
        "diverged": len(getattr(report, "diverged", [])),
        "checkpoints": int(ds.runs["n_checkpoints"].sum()),
        "hash": ds.manifest.hash,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


@data_app.command("summary")
def data_summary(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")] = Path("data"),
) -> None:
    """Print runs per task × optimizer, diverged runs, size on disk and the dataset hash."""
    console.print(_summary_table(path))


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")] = Path("data"),
) -> None:
    """Check schema, shapes, dtypes, steps, finite values and hashes; list every problem found."""
    from gfm.data.validate import validate

    problems = validate(path)
    if not problems:
        console.print(f"[green]{path}: valid[/green]")
        return
    for p in problems:
        console.print(f"[red]✗[/red] {p}", highlight=False)
    console.print(f"{len(problems)} problem(s) in {path}")
    raise typer.Exit(1)


@data_app.command("import")
def data_import(
    source: Annotated[
        Path,
        typer.Argument(help="A .npy/.npz array (runs, checkpoints, params) or a folder of runs."),
    ],
    dest: Annotated[Path, typer.Option(help="Dataset folder to write.")] = Path("data-imported"),
    metadata: Annotated[
        Path | None,
        typer.Option(help="Per-run metadata, CSV or JSON (run_id, optimizer, lr, ...)."),
    ] = None,
    task: Annotated[str, typer.Option(help="Task name recorded for the runs.")] = "imported",
    optimizer: Annotated[
        str | None, typer.Option(help="Optimizer of every run (if no metadata).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Base learning rate of every run (if no metadata).")
    ] = None,
    record_every: Annotated[
        int | None, typer.Option(help="Optimizer steps between checkpoints.")
    ] = None,
) -> None:
    """Import trajectories you bring into the gfm format, validated like generated data.

    Examples:
        gfm data import runs.npz --metadata runs.csv --dest data-imported
        gfm data import weights.npy --optimizer adam --lr 1e-3 --record-every 10
        gfm data import checkpoints/ --optimizer sgd --lr 0.1   # one subfolder of *.pt per run
    """
    from gfm.data.importer import import_arrays, import_state_dicts
    from gfm.data.io import DatasetError

    try:
        if source.is_dir():
            manifest = import_state_dicts(
                source, dest, metadata_path=metadata, task=task, optimizer=optimizer, lr=lr
            )
        else:
            manifest = import_arrays(
                source,
                dest,
                metadata_path=metadata,
                task=task,
                optimizer=optimizer,
                lr=lr,
                record_every=record_every,
            )
    except (DatasetError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]Import failed[/red]\n{err}", highlight=False)
        raise typer.Exit(1) from None
    console.print(_summary_table(dest))
    console.print(
        f"imported {manifest.counts.runs} run(s) into {dest} (hash {manifest.hash[:16]}…)"
    )


@data_app.command("version")
def data_version(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """`dvc add` the dataset folder and `dvc push` it to the configured remote; print its md5."""
    from gfm import versioning

    cfg = _settings(params, set_)
    md5 = versioning.add_and_push(cfg.data.root, cfg.data.remote)
    console.print(f"dataset version (md5): {md5}")


# ----------------------------------------------------------------------------- the workflow

StepErrors = (FileNotFoundError, ValueError, RuntimeError)


def _fail(what: str, err: BaseException, code: int = 1) -> typer.Exit:
    console.print(f"[red]{what} failed[/red]\n{err}", highlight=False)
    return typer.Exit(code)


def _produced(title: str, rows: list[tuple[str, object]], cfg: Settings) -> None:
    """End of a command: what it produced and where, and how to look at it in MLflow."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("where / value", overflow="fold")
    for what, value in rows:
        if value not in (None, "", {}):
            table.add_row(what, str(value))
    uri = cfg.tracking.uri
    ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    table.add_row("MLflow UI", ui)
    console.print(table)


def _tuned_rows(doc: dict) -> list[tuple[str, object]]:
    best = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in doc.get("best_params", {}).items()
    )
    return [
        ("study", f"{doc.get('study')} in {doc.get('storage')}"),
        (
            "trials",
            f"{doc.get('n_complete')} complete, {doc.get('n_pruned')} pruned, {doc.get('n_failed')} failed ({doc.get('n_new')} new)",
        ),
        ("best trial", f"#{doc.get('best_trial')}: {doc.get('metric')}={doc.get('best_value')}"),
        ("best params", best),
        ("tune run", doc.get("run_id")),
    ]


@app.command()
def run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the whole workflow (the Prefect `retrain` flow): generate, tune, train, evaluate, promote.

    The data is generated (or updated), validated and versioned with DVC (`dvc add` + `dvc push`);
    Optuna tunes GFM (resuming an interrupted study), GFM trains with the best trial's params,
    it and the baselines are evaluated on the test split, and the model is registered in MLflow
    as `champion` (better than the current champion) or `challenger`. In the project's DVC
    repository (its own params.yaml, no `--set`) the first four steps are `dvc repro <stage>`,
    so `dvc repro` afterwards has nothing to do. Examples:

        gfm run
        gfm run --set tune.n_trials=0 --set train.steps=300    # quick: no tuning, short training
    """
    cfg = _settings(params, set_)
    from flows.retrain import retrain
    from gfm import pipeline

    try:
        summary = retrain(params=str(params), overrides=list(set_ or []))
    except StepErrors as err:
        raise _fail("gfm run", err) from None
    out = pipeline.layout(cfg)
    tuned = (
        pipeline.read_json(Path(summary["tune"]), "tune") if Path(summary["tune"]).is_file() else {}
    )
    trained = pipeline.read_json(Path(summary["train"]), "train")
    scores = pipeline.read_json(Path(summary["metrics"]), "evaluate")
    d = summary["decision"]
    _produced(
        "gfm run",
        [
            ("dataset version", f"{summary['dataset_version']} ({cfg.data.root})"),
            *(_tuned_rows(tuned) if tuned.get("study") else [("tuning", "off (tune.n_trials=0)")]),
            ("train run", f"{trained['run_id']} (experiment {cfg.tracking.experiment})"),
            ("model", f"{cfg.train.model_dir} and {trained['model_uri']}"),
            ("test metrics", ", ".join(f"{k}={v:.4g}" for k, v in scores["metrics"].items())),
            (
                "registry",
                f"{d['model_name']} version {d['version']} -> @{d['alias']} ({d['model_uri']})",
            ),
            ("decision", d["reason"]),
            ("reports", out.reports),
        ],
        cfg,
    )


@app.command()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes on the study (default tune.workers; >1: PostgreSQL)."
        ),
    ] = None,
) -> None:
    """Search GFM hyperparameters with Optuna (`tune` in params.yaml); write reports/tune.json.

    A seeded TPE sampler draws from `tune.space`; a median pruner stops trials whose validation
    forecast loss (`tune.metric`) lags. The study lives in `tune.storage` (sqlite beside the
    MLflow store by default) and resumes where an interrupted run stopped. Each trial is a
    nested MLflow run under a `tune` run. With `--workers N` (PostgreSQL storage, team mode)
    N processes share the study; `gfm tune-worker` adds more from other machines. Examples:

        gfm tune
        gfm tune --set tune.n_trials=20 --set tune.trial_steps=600
        gfm tune --set 'tune.space.gfm.width={choices: [64, 128, 256]}'
        GFM_TEAM__ENABLED=true gfm tune --workers 4 --set tune.n_trials=40
    """
    cfg = _settings(params, set_)
    from gfm import pipeline

    try:
        doc = pipeline.tune_step(cfg, repo=params.resolve().parent, workers=workers)
    except StepErrors as err:
        raise _fail("gfm tune", err) from None
    _produced(
        "gfm tune",
        [
            *_tuned_rows(doc),
            ("trials per worker", doc.get("workers")),
            ("file", pipeline.layout(cfg).tune_json),
        ],
        cfg,
    )


@app.command("tune-worker")
def tune_worker(
    study: Annotated[
        str,
        typer.Option(help="The study `gfm tune` printed (name-fingerprint), or tune.study_name."),
    ],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Join a running study from this machine and work on it until it is finished.

    Needs the same params.yaml and dataset version as the machine that started the study (its
    name carries their fingerprint) and the shared PostgreSQL storage, i.e. team mode. Trials
    are logged under the study's `tune` run. A worker that dies mid-trial is noticed by its
    heartbeat; its trial is failed and run again by another worker. Examples:

        GFM_TEAM__ENABLED=true gfm tune-worker --study gfm-1a2b3c4d
        gfm tune-worker --study gfm --set team.enabled=true --set data.root=/shared/data
    """
    cfg = _settings(params, set_)
    from gfm import pipeline

    try:
        doc = pipeline.tune_worker_step(cfg, study=study, repo=params.resolve().parent)
    except StepErrors as err:
        raise _fail("gfm tune-worker", err) from None
    _produced(
        "gfm tune-worker",
        [
            ("study", doc["study"]),
            ("trials by this worker", doc["n_new"]),
            ("study trials finished", f"{doc['n_finished']} of {doc['n_trials']}"),
        ],
        cfg,
    )


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    tuned: Annotated[
        Path | None,
        typer.Option(
            help="tune.json whose best params to train with (default: reports/tune.json when present)."
        ),
    ] = None,
    use_tuned: Annotated[
        bool, typer.Option("--use-tuned/--no-tuned", help="Apply the tuned params at all.")
    ] = True,
) -> None:
    """Train GFM on the train part of `train.split`, log it to MLflow, write the model folder.

    The best trial's params (reports/tune.json) override `gfm`/`train`; `train.device: auto`
    trains on CUDA when present. Writes `train.model_dir`, reports/train.json and
    reports/train_history.csv; logs params, losses, the dataset version and the model (pyfunc).
    For example:

        gfm train
        gfm train --no-tuned --set gfm.width=128      # exactly the settings given
    """
    cfg = _settings(params, set_)
    from gfm import pipeline

    out = pipeline.layout(cfg)
    try:
        doc = pipeline.train_step(
            cfg, tuned=(tuned or out.tune_json) if use_tuned else None, repo=params.resolve().parent
        )
    except StepErrors as err:
        raise _fail("gfm train", err) from None
    _produced(
        "gfm train",
        [
            ("train run", doc["run_id"]),
            ("tuned params", doc["params"] or "none (settings as given)"),
            (
                "val metrics",
                ", ".join(
                    f"{k}={v:.4g}" for k, v in doc["metrics"].items() if k.startswith("val/")
                ),
            ),
            ("model folder", doc["model_dir"]),
            ("logged model", doc["model_uri"]),
            ("files", f"{out.train_json}, {out.history_csv}"),
        ],
        cfg,
    )


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="Forecaster folder (default: train.model_dir).")
    ] = None,
    train_info: Annotated[
        Path | None,
        typer.Option(help="train.json naming the MLflow run to add the results to."),
    ] = None,
) -> None:
    """Evaluate the trained model and `evaluate.workflow_baselines` on the test split.

    Forecasts every test run of `train.split` from each `evaluate.observed_fractions`; writes
    reports/metrics.json, results.csv/.md, horizon.csv/.png and trajectories.png, and logs
    the metrics, table and plots to the training run. Examples:

        gfm evaluate
        gfm evaluate --set 'evaluate.workflow_baselines=[persistence, linear, dmd]'
    """
    cfg = _settings(params, set_)
    from gfm import pipeline

    out = pipeline.layout(cfg)
    try:
        doc = pipeline.evaluate_step(
            cfg, model_dir=model, train_info=train_info, repo=params.resolve().parent
        )
    except StepErrors as err:
        raise _fail("gfm evaluate", err) from None
    console.print(out.results_md.read_text().split("\n## ")[0], highlight=False)
    _produced(
        "gfm evaluate",
        [
            ("run", doc["run_id"]),
            ("test metrics", ", ".join(f"{k}={v:.4g}" for k, v in doc["metrics"].items())),
            ("files", f"{out.metrics_json}, {out.results_md}, {out.horizon_png}"),
        ],
        cfg,
    )


@app.command()
def promote(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    train_info: Annotated[Path | None, typer.Option(help="train.json (default: reports/).")] = None,
    metrics: Annotated[Path | None, typer.Option(help="metrics.json (default: reports/).")] = None,
) -> None:
    """Register the trained model; make it `champion` if it beats the champion, else `challenger`.

    The champion is re-scored on the same test split; the new version must be better on
    `registry.metric` by the relative `registry.margin`. Versions are tagged with the dataset
    version, git commit, params and metrics. Examples:

        gfm promote
        gfm promote --set registry.margin=0.02
    """
    cfg = _settings(params, set_)
    from gfm import pipeline

    try:
        d = pipeline.promote_step(cfg, train_info=train_info, metrics=metrics)
    except StepErrors as err:
        raise _fail("gfm promote", err) from None
    _produced(
        "gfm promote",
        [
            ("version", f"{d['model_name']} version {d['version']}"),
            ("alias", f"@{d['alias']} ({d['model_uri']})"),
            ("decision", d["reason"]),
            ("file", pipeline.layout(cfg).promotion_json),
        ],
        cfg,
    )


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

    cfg = _settings(params, set_)
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
    from gfm import tracking

    target = model or tracking.model_uri(cfg.registry)
    try:
        if Path(target).is_dir():
            forecaster = tracking.load_forecaster(Path(target))
            t = torch_times(prefix)
            w = forecaster.forecast(prefix, t).detach().cpu().numpy().astype(np.float32)
        else:
            tracking.use_store(cfg.tracking)
            w = tracking.predict(target, prefix)
    except Exception as err:  # MLflow raises several types for a missing model or alias
        raise _fail(f"forecast with {target}", err) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, w)
    console.print(
        f"forecast {w.shape[0]} checkpoints (k+1={prefix.k + 1}..M={prefix.M}) of "
        f"{w.shape[1]} parameters with {target} -> [bold]{output}[/bold] (shape {w.shape})"
    )


def torch_times(prefix: object) -> object:
    """t_{k+1}..t_M = (k+1..M)/M as a float64 tensor."""
    import torch

    k, M = prefix.k, prefix.M  # type: ignore[attr-defined]
    return torch.arange(k + 1, M + 1, dtype=torch.float64) / M


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
    cfg = _settings(params, set_)
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
        raise _fail("gfm compare", err, code=2 if isinstance(err, ValueError) else 1) from None
    table = Table(title=f"{len(frame)} run(s) in {cfg.tracking.uri}")
    shown = [c for c in frame.columns if c != "start_time"]
    for c in shown:
        table.add_column(c, overflow="fold")
    for row in frame.iter_rows(named=True):
        table.add_row(*[_cell(row[c], c) for c in shown])
    console.print(table)
    if output is not None:
        from gfm.evaluation import to_markdown

        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".csv":
            frame.write_csv(output)
        else:
            output.write_text(to_markdown(frame))
        console.print(f"wrote {len(frame)} run(s) to [bold]{output}[/bold]")


def _cell(value: object, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    text = str(value)
    return text[:8] if column == "run_id" else text[:14] if column == "dataset_version" else text


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
    cfg = _settings(params, [*(set_ or []), *extra])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfm import jumpahead, pipeline

    acc = cfg.accelerate
    tuned: dict = {}
    if use_tuned and model is None and acc.model is None and "gfm" in acc.methods:
        cfg, tuned = jumpahead.with_tuned(cfg, pipeline.layout(cfg).tune_json)
    try:
        with console.status("fitting or loading the jump forecasters ..."):
            models = jumpahead.forecasters(cfg, model=model)
        runs = len(jumpahead.jobs(cfg)) * len({"base", *acc.methods})
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("training", total=runs)

            def on_run(job: jumpahead.Job, method: str, finished: bool) -> None:
                label = f"{job.task} {job.arch} seed {job.seed} {method}"
                progress.update(bar, advance=int(finished), description=label)

            comparison = jumpahead.compare(cfg, models, on_run=on_run)
        paths = jumpahead.write(comparison, acc.output_dir)
    except StepErrors as err:
        raise _fail("gfm accelerate", err) from None
    summary = jumpahead.summarize(comparison.table)
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
        table.add_row(*[_cell(row[c], c) for c in shown])
    console.print(table)
    run_id = None
    if log_mlflow:
        from gfm.tracking.comparison import log_comparison

        try:
            run_id = log_comparison(
                cfg,
                paths,
                dataset_version=(
                    pipeline.dataset_version(cfg.data.root) if cfg.data.root.is_dir() else None
                ),
                repo=params.resolve().parent,
            )
        except Exception as err:  # MLflow raises several types for an unreachable store
            raise _fail("logging to MLflow", err) from None
    _produced(
        "gfm accelerate",
        [
            ("tuned GFM params", ", ".join(f"{k}={v}" for k, v in tuned.items())),
            ("files", ", ".join(str(p) for p in paths.values())),
            ("MLflow run", f"{run_id} (experiment {cfg.tracking.experiment})" if run_id else None),
        ],
        cfg,
    )


@app.command()
def schedule(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression (default: schedule.cron).")
    ] = None,
) -> None:
    """Serve the `retrain` flow on the cron of `schedule.cron` until stopped (Ctrl-C).

    Needs a Prefect server (the temporary local API cannot run schedules):

        prefect server start                                  # in another terminal
        export PREFECT_API_URL=http://127.0.0.1:4200/api
        gfm schedule                                          # every Monday 03:00 UTC by default
        prefect deployment run 'retrain/gfm-retrain'          # a run now, besides the schedule
    """
    cfg = _settings(params, set_)
    if set_:
        console.print(
            "[red]gfm schedule serves a params file: put the settings in it instead of --set[/red]"
        )
        raise typer.Exit(2)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        console.print(
            "[red]No Prefect server: PREFECT_API_URL is not set.[/red]\n"
            "Start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`; the temporary local API "
            "cannot run schedules.",
            highlight=False,
        )
        raise typer.Exit(2)
    from flows.retrain import serve

    when = cron or cfg.schedule.cron
    console.print(
        f"serving retrain as deployment [bold]retrain/{cfg.schedule.deployment}[/bold] on "
        f"cron '{when}' ({cfg.schedule.timezone}) against {PREFECT_API_URL.value()}"
    )
    serve(str(params), cron=when, timezone=cfg.schedule.timezone, name=cfg.schedule.deployment)


# ----------------------------------------------------------------------------- team stack

STATE_DIR = Path("~/.cache/gfm/team")
StateOpt = Annotated[Path, typer.Option(help="Where pid files and logs go.", show_default=True)]


@stack_app.command("up")
def stack_up(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: team.tracking.uri's host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="MLflow server port (default: team.tracking.uri's port).")
    ] = None,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow's PostgreSQL database (default: `gfm_mlflow` on team.tune.storage's server)."
        ),
    ] = None,
    artifacts: Annotated[
        str, typer.Option(help="Artifact destination: a folder, or s3://bucket/path.")
    ] = "~/.cache/gfm/team/mlartifacts",
    prefect: Annotated[
        bool, typer.Option("--prefect/--no-prefect", help="Also start a Prefect server.")
    ] = False,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Allow binding a non-loopback interface (no auth!)."),
    ] = False,
    state_dir: StateOpt = STATE_DIR,
) -> None:
    """Start a team stack on this machine: an MLflow server on the local PostgreSQL.

    Creates the databases if missing (MLflow's and `team.tune.storage`'s), starts
    `mlflow server` (and with `--prefect` a Prefect server) in the background, waits until
    they answer, and prints the URLs and the environment that switches gfm to team mode. It
    binds loopback only unless `--allow-remote`. Examples:

        gfm stack up
        gfm stack up --prefect --port 5001
        gfm stack up --host 0.0.0.0 --allow-remote --artifacts s3://gfm-artifacts/mlflow
    """
    from urllib.parse import urlsplit, urlunsplit

    from gfm import stack

    cfg = _settings(params, set_)
    tracking = urlsplit(str(cfg.team.tracking.get("uri", "http://127.0.0.1:5000")))
    storage = str(cfg.team.tune.get("storage", ""))
    host = host or tracking.hostname or "127.0.0.1"
    port = port or tracking.port or 5000
    if backend_store_uri is None:
        if not storage.startswith("postgresql"):
            console.print(
                "[red]team.tune.storage must be a postgresql URL, or give --backend-store-uri[/red]"
            )
            raise typer.Exit(2)
        backend_store_uri = urlunsplit(urlsplit(storage)._replace(path="/gfm_mlflow"))
    dest = artifacts if "://" in artifacts else Path(artifacts).expanduser().resolve()
    try:
        services = stack.up(
            database_url=backend_store_uri,
            optuna_url=storage if storage.startswith("postgresql") else None,
            artifacts=dest,
            state_dir=state_dir.expanduser(),
            host=host,
            port=port,
            prefect_port=prefect_port if prefect else None,
            allow_remote=allow_remote,
        )
    except ValueError as err:
        raise _fail("gfm stack up", err, code=2) from None
    except (ConnectionError, RuntimeError) as err:
        raise _fail("gfm stack up", err) from None
    table = Table(title="gfm team stack", show_header=True, title_justify="left")
    for column in ("server", "url", "pid", "log"):
        table.add_column(column, overflow="fold")
    for s in services:
        table.add_row(s.name, s.url, str(s.pid), str(s.log))
    console.print(table)
    from gfm.pipeline import redact

    console.print(
        f"MLflow backend store: {redact(backend_store_uri)}; artifacts: {dest}", soft_wrap=True
    )
    lines = [
        "export GFM_TEAM__ENABLED=true",
        f"export GFM_TEAM__TRACKING__URI={services[0].url}",
        f"export GFM_TEAM__TUNE__STORAGE={storage}",
    ]
    if prefect:
        lines.append(f"export PREFECT_API_URL={services[1].url}/api")
    console.print("Team mode for this shell:\n" + "\n".join(lines), highlight=False, soft_wrap=True)


@stack_app.command("down")
def stack_down(state_dir: StateOpt = STATE_DIR) -> None:
    """Stop the servers `gfm stack up` started: `gfm stack down`; their data stays in PostgreSQL."""
    from gfm import stack

    stopped = stack.down(state_dir.expanduser())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(state_dir: StateOpt = STATE_DIR) -> None:
    """Show the servers `gfm stack up` started, and whether they answer: `gfm stack status`."""
    from gfm import stack

    services = stack.status(state_dir.expanduser())
    if not services:
        console.print("no team stack was started from " + str(state_dir))
        raise typer.Exit(1)
    for s in services:
        state = "[green]up[/green]" if s.healthy else "[red]down[/red]"
        console.print(f"{s.name}: {state} {s.url} (pid {s.pid}, log {s.log})")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry point
    """Run the ``gfm`` command line."""
    app()
