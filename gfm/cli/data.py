"""`gfm generate` and `gfm data ...`: make, import, validate, summarise and version datasets."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gfm.cli._app import ParamsOpt, SetOpt, app, data_app, read_settings
from gfm.cli.render import console, fail, progress_bar, summary_table
from gfm.config import Settings

if TYPE_CHECKING:
    from gfm.data.format import Manifest
    from gfm.data.generate import GenerateReport
    from gfm.data.stop import Terminated


@app.command()
def generate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Parallel processes or local Dask workers (default data.workers)."
        ),
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
    from gfm.data.lock import DatasetLocked
    from gfm.data.space import DiskFull
    from gfm.data.stop import Terminated
    from gfm.ops import versioning

    cfg = read_settings(params, set_)
    try:
        report = _generate(cfg, workers)
    except (DatasetLocked, DiskFull, ValueError) as err:
        raise fail("gfm generate", err) from None
    except Terminated as err:
        raise _stopped(cfg.data.root, err) from None
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


def _generate(cfg: Settings, workers: int | None) -> GenerateReport:
    """Generate on the configured executor: local processes, or Prefect's DaskTaskRunner."""
    from gfm.data.generate import generate as run_generation

    if cfg.data.executor == "dask":  # a local or an existing cluster
        from flows.generate import generate_on_dask

        if workers is not None:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": workers})})
        return generate_on_dask(cfg.data)
    from gfm.data.stop import sigterm_raises

    # SIGTERM stops the pool's workers and leaves the dataset as it was (gfm.data.stop)
    with sigterm_raises(), progress_bar("training runs") as progress:
        return run_generation(cfg.data, workers=workers, progress=progress)


def _stopped(root: Path, err: Terminated) -> typer.Exit:
    """Say in one line where a generation stopped by SIGTERM left the data; exit 143 (128 + 15)."""
    from gfm.data.writer import staging_path

    if err.after:
        line = f"gfm generate stopped by SIGTERM after {err.after}; no summary or DVC step ran"
    else:
        staging = staging_path(root)
        staged = sum(1 for p in staging.rglob("[!.]*") if p.is_file()) if staging.is_dir() else 0
        line = "gfm generate stopped by SIGTERM: " + (
            f"the dataset at {root} is unchanged" if root.exists() else "no dataset was written"
        )
        if staged:
            line += (
                f"; the {staged} run(s) finished so far stay in {staging} and the next "
                "`gfm generate` reuses them"
            )
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(128 + signal.SIGTERM)


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
def data_import(  # noqa: PLR0913 - typer: one parameter per command-line option
    source: Annotated[
        Path,
        typer.Argument(help="A .npy/.npz array (runs, checkpoints, params) or a folder of runs."),
    ],
    dest: Annotated[Path, typer.Option(help="Dataset folder to write.")] = Path("data-imported"),
    metadata: Annotated[
        Path | None,
        typer.Option(help="Per-run metadata, CSV or JSON (run_id, optimizer, lr, split, ...)."),
    ] = None,
    task: Annotated[str, typer.Option(help="Task name recorded for the runs.")] = "imported",
    optimizer: Annotated[
        str | None, typer.Option(help="Optimizer of every run (if no metadata).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Base learning rate of every run (if no metadata).")
    ] = None,
    record_every: Annotated[
        int | None, typer.Option(help="Optimizer steps between checkpoints (arrays).")
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            help="PART=RUNS, e.g. val=160-179 or test=180-199,205 (0-based run positions, "
            "inclusive; repeatable); runs named nowhere are train. Default: a metadata `split` "
            "column, else the last 10% of each group test and 10% val."
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help="The state_dict layout of an array's D parameters, [[name, shape], ...]: a "
            "JSON file, or the JSON itself (as in gfm forecast's sidecar). Default: one tensor w."
        ),
    ] = None,
) -> None:
    """Import trajectories you bring into the gfm format, validated like generated data.

    The seed split comes from --split, or a `split` metadata column, or else holds out the last
    10% of each (task, optimizer, arch) group for test and 10% for val. Examples:

        gfm data import runs.npz --metadata runs.csv --dest data-imported
        gfm data import weights.npy --optimizer adam --lr 1e-3 --record-every 10
        gfm data import runs.npz --metadata runs.csv --split val=160-179 --split test=180-199
        gfm data import runs.npz --metadata runs.csv --layout layout.json  # tensor names, shapes
        gfm data import checkpoints/ --optimizer sgd --lr 0.1   # one subfolder of *.pt per run
    """
    from gfm.data.format import DatasetError

    try:
        manifest, notes = _import(
            source, dest, metadata, task, optimizer, lr, record_every, split, layout
        )
    except (DatasetError, ValueError, FileNotFoundError) as err:
        raise fail("import", err) from None  # printed as text: layouts hold [[...]]
    for note in notes:
        console.print("note: " + note, markup=False, highlight=False)
    console.print(summary_table(dest))
    seed = manifest.splits.counts["seed"]
    console.print(
        f"imported {manifest.counts.runs} run(s) into {dest} (hash {manifest.hash[:16]}…); "
        f"seed split {seed['train']} train, {seed['val']} val, {seed['test']} test "
        f"({manifest.splits.rules.get('given', 'split counts')})",
        highlight=False,
    )


def _import(  # noqa: PLR0913 - the options of `data import`, passed on
    source: Path,
    dest: Path,
    metadata: Path | None,
    task: str,
    optimizer: str | None,
    lr: float | None,
    record_every: int | None,
    split: list[str] | None,
    layout: str | None,
) -> tuple[Manifest, list[str]]:
    """Run the import; (its manifest, the warnings it gave as lines)."""
    import warnings

    from gfm.data.importer import import_arrays, import_state_dicts

    parts = _split_option(split or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if source.is_dir():
            for name, value in (("--layout", layout), ("--record-every", record_every)):
                if value is not None:
                    raise ValueError(
                        f"{source}: {name} is for array inputs; a folder's checkpoints give it "
                        "(tensor shapes, step numbers in the file names)"
                    )
        common = {
            "metadata_path": metadata,
            "task": task,
            "optimizer": optimizer,
            "lr": lr,
            "split": parts,
        }
        if source.is_dir():
            manifest = import_state_dicts(source, dest, **common)
        else:
            manifest = import_arrays(
                source, dest, **common, record_every=record_every, layout=_layout_option(layout)
            )
    return manifest, [str(w.message) for w in caught]


def _split_option(values: list[str]) -> dict[str, str]:
    """``["val=160-179", "test=180-199"]`` -> ``{"val": "160-179", "test": "180-199"}``."""
    parts: dict[str, str] = {}
    for value in values:
        part, sep, runs = value.partition("=")
        if not sep or not runs.strip():
            raise ValueError(
                f"--split must be PART=RUNS like val=160-179 (parts train, val, test), got {value!r}"
            )
        part = part.strip()
        parts[part] = f"{parts[part]},{runs.strip()}" if part in parts else runs.strip()
    return parts


def _layout_option(value: str | None) -> list | None:
    """The ``--layout`` JSON: inline (starting with ``[``) or in a file."""
    import json

    if value is None:
        return None
    text, where = value, "--layout"
    if not value.lstrip().startswith("["):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --layout file must exist (or give the JSON itself)")
        text, where = path.read_text(), f"{path}"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where}: must be JSON [[name, shape], ...], e.g. "
            f'[["fc1.weight", [16, 8]], ["fc1.bias", [16]]], got {err}'
        ) from None
    return doc


@data_app.command("version")
def data_version(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """`dvc add` the dataset folder and `dvc push` it to the configured remote; print its md5."""
    from gfm.ops import versioning

    cfg = read_settings(params, set_)
    md5 = versioning.add_and_push(cfg.data.root, cfg.data.remote)
    console.print(f"dataset version (md5): {md5}")
