"""`gfm generate` and `gfm data ...`: make, import, validate, summarise and version datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gfm.cli._app import ParamsOpt, SetOpt, app, data_app, read_settings
from gfm.cli.render import console, progress_bar, summary_table


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
    from gfm.data.generate import generate as run_generation
    from gfm.ops import versioning

    cfg = read_settings(params, set_)
    if cfg.data.executor == "dask":  # Prefect's DaskTaskRunner: a local or an existing cluster
        from flows.generate import generate_on_dask

        if workers is not None:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": workers})})
        report = generate_on_dask(cfg.data)
    else:
        with progress_bar("training runs") as progress:
            report = run_generation(cfg.data, workers=workers, progress=progress)
    console.print(summary_table(cfg.data.root))
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
    from gfm.data.atomic import write_json
    from gfm.data.trajectories import Trajectories

    ds = Trajectories(root)
    doc = {
        "runs": len(ds.runs),
        "diverged": len(getattr(report, "diverged", [])),
        "checkpoints": int(ds.runs["n_checkpoints"].sum()),
        "hash": ds.manifest.hash,
    }
    write_json(path, doc)


@data_app.command("summary")
def data_summary(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")] = Path("data"),
) -> None:
    """Print runs per task × optimizer, diverged runs, size on disk and the dataset hash."""
    console.print(summary_table(path))


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
    from gfm.data.format import DatasetError
    from gfm.data.importer import import_arrays, import_state_dicts

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
    console.print(summary_table(dest))
    console.print(
        f"imported {manifest.counts.runs} run(s) into {dest} (hash {manifest.hash[:16]}…)"
    )


@data_app.command("version")
def data_version(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """`dvc add` the dataset folder and `dvc push` it to the configured remote; print its md5."""
    from gfm.ops import versioning

    cfg = read_settings(params, set_)
    md5 = versioning.add_and_push(cfg.data.root, cfg.data.remote)
    console.print(f"dataset version (md5): {md5}")
