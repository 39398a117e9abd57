"""Everything the CLI prints: the console, tables, step summaries and failures (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gfm.config import Settings

console = Console()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def summary_table(root: Path) -> Table:
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


StepErrors = (FileNotFoundError, ValueError, RuntimeError)


def fail(what: str, err: BaseException, code: int = 1) -> typer.Exit:
    """Print why ``what`` failed; the exit to raise (status ``code``)."""
    console.print(f"[red]{what} failed[/red]\n{err}", highlight=False)
    return typer.Exit(code)


def produced(title: str, rows: list[tuple[str, object]], cfg: Settings) -> None:
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


def tuned_rows(doc: dict) -> list[tuple[str, object]]:
    """The rows of ``produced`` that describe a tune.json: study, trials, best trial and params."""
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


def cell(value: object, column: str) -> str:
    """A table cell: floats to 4 digits, ids and versions shortened."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    text = str(value)
    return text[:8] if column == "run_id" else text[:14] if column == "dataset_version" else text


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields the ``progress(done, total)`` callback gfm's loops report to."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
