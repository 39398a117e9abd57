"""The ``gfm`` command line: a thin shell that loads settings, calls the library and prints with rich.

Every command takes ``--params`` (default ``params.yaml``) and repeatable ``--set key=value``
overrides; bad settings print ``params.yaml: <key>: <problem>`` and exit with status 2.
"""

from __future__ import annotations

import json
import logging
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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


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
        int | None, typer.Option(help="Parallel processes (default data.workers).")
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
    one atomically. Examples:

        gfm generate
        gfm generate --set data.seeds=8 --workers 2
        gfm generate --no-dvc --summary reports/dataset.json   # as a DVC stage
    """
    from gfm import versioning
    from gfm.data.generate import generate as run_generation

    cfg = _settings(params, set_)
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


@app.command()
def run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the main job on the settings in params.yaml: the dataset, reproduced and versioned.

    In a DVC repository this is `dvc repro` (each stage a `gfm` command, skipped when its params and
    code are unchanged), then `dvc add data` and `dvc push`, so `dvc status` ends clean; elsewhere it
    generates directly. Example:

        gfm run
    """
    from gfm import versioning

    cfg = _settings(params, set_)
    repo = versioning.find_repo(cfg.data.root)
    if repo is None or set_ or params.resolve() != (repo / "params.yaml").resolve():
        # `dvc repro` reads the repository's params.yaml only: other settings generate directly.
        generate(params=params, set_=set_, workers=None, version=repo is not None, summary=None)
        return
    dvc_file = cfg.data.root.with_suffix(".dvc")
    if not cfg.data.root.exists() and dvc_file.exists():
        # The stage may be up to date while its data folder is gone: fetch it from the remote,
        # and regenerate it only when the remote does not have it.
        versioning.ensure_remote(repo, cfg.data.remote)
        if versioning.dvc("pull", dvc_file.name, repo=repo, check=False).returncode != 0:
            versioning.dvc("repro", "--force", "generate", repo=repo, stream=True)
    versioning.dvc("repro", repo=repo, stream=True)
    md5 = versioning.add_and_push(cfg.data.root, cfg.data.remote)
    console.print(_summary_table(cfg.data.root))
    console.print(
        f"dataset version (data.dvc md5): [bold]{md5}[/bold], pushed to {cfg.data.remote}"
    )


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


def main() -> None:  # pragma: no cover - console entry point
    """Run the ``gfm`` command line."""
    app()
