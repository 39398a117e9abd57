"""Everything the CLI prints: the console, tables, step summaries and failures (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
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


def fail(what: str, err: BaseException | str, code: int = 1) -> typer.Exit:
    """Print why ``what`` failed; the exit to raise (status ``code``).

    The message is printed as it is: brackets in it (``[[name, shape], ...]``) are text, not
    rich markup.
    """
    console.print(f"[red]{escape(what)} failed[/red]")
    console.print(str(err), markup=False, highlight=False)
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
    if not doc.get("study"):
        return [("tuning", "off (tune.n_trials=0): training uses the settings as given")]
    best = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in doc.get("best_params", {}).items()
    )
    where = f" in {doc['storage']}" if doc.get("storage") else ""
    new = f" ({doc['n_new']} new)" if "n_new" in doc else " (up to date: not rerun)"
    value = doc.get("best_value")
    value = f"{value:.4g}" if isinstance(value, float) else value
    rows = [
        ("study", f"{doc['study']}{where}"),
        (
            "trials",
            f"{doc.get('n_complete', 0)} complete, {doc.get('n_pruned', 0)} pruned, "
            f"{doc.get('n_failed', 0)} failed{new}",
        ),
        ("best trial", f"#{doc.get('best_trial')}: {doc.get('metric', 'objective')}={value}"),
        ("best params", best),
        ("tune run", doc.get("run_id")),
    ]
    return [(what, value) for what, value in rows if value is not None]


def score_rows(doc: dict) -> list[tuple[str, object]]:
    """The rows of ``produced`` that describe a metrics.json: forecast error, held-out accuracy.

    The headline error is the median over test runs of the final weights' MSE relative to
    persistence's; its mean is left out (a few runs that barely move make it huge).
    """
    m, base = doc.get("metrics", {}), doc.get("baselines", {})
    rows: list[tuple[str, object]] = []
    median = m.get("test/rel_mse_persistence_median")
    if median is not None:
        others = ", ".join(
            f"{k.split('/')[1]} {v:.3g}"
            for k, v in base.items()
            if k.endswith("/rel_mse_persistence_median")
        )
        rows.append(
            (
                "test: weight error",
                f"{median:.4g} = median over test runs of the final weights' MSE / "
                f"persistence's (below 1 beats keeping the last checkpoint)"
                + (f"; baselines: {others}" if others else ""),
            )
        )
    if "test/acc_forecast" in m:
        rows.append(
            (
                "test: held-out accuracy",
                f"forecast {m['test/acc_forecast']:.3f}, last checkpoint "
                f"{m.get('test/acc_last', float('nan')):.3f}, true final "
                f"{m.get('test/acc_final', float('nan')):.3f} (task network, mean over "
                "classification test runs; per task in the table above)",
            )
        )
    return rows


def held_out_table(rows: list[dict], method: str = "GFM") -> Table:
    """The task network's held-out accuracy / loss: last checkpoint, forecast and true final.

    One row per task and observed fraction (``gfm.evaluation.held_out``).
    """
    table = Table(
        title=f"Held-out accuracy / loss of the task network (test runs, mean; {method} forecast)",
        title_justify="left",
    )
    for name, justify in (("task", "left"), ("observed", "right"), ("runs", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for name in ("last checkpoint", f"{method} forecast", "true final"):
        table.add_column(name, justify="right", no_wrap=True)

    def pair(acc: float | None, loss: float | None) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None or x != x else f"{x:.3g}"

        return f"{fmt(acc)} / {fmt(loss)}"

    for r in rows:
        table.add_row(
            str(r["task"]),
            f"{r['observed_fraction']:g}",
            str(r["n_runs"]),
            pair(r["last_acc"], r["last_loss"]),
            pair(r["forecast_acc"], r["forecast_loss"]),
            pair(r["final_acc"], r["final_loss"]),
        )
    table.caption = "accuracy / loss; accuracy '-' for regression tasks"
    return table


def held_out_scores(title: str, scores: dict[str, tuple[float, float]]) -> Table:
    """Held-out loss and accuracy of one network per set of weights (``name -> (loss, acc)``)."""
    table = Table(title=title, title_justify="left")
    for name in ("weights", "accuracy", "loss"):
        table.add_column(name, justify="left" if name == "weights" else "right")
    for name, (loss, acc) in scores.items():
        table.add_row(name, "-" if acc != acc else f"{acc:.3f}", f"{loss:.4g}")
    return table


def backtest_table(table: pl.DataFrame, what: str) -> Table:
    """A backtest (``gfm.ops.backtest``), one section per observed fraction.

    Rows: the last checkpoint, each method's forecast and the true final weights, with their
    error and held-out scores.
    """
    out = Table(
        title=f"Backtest of {what}: the run hidden after t_k, forecast to t = 1",
        title_justify="left",
    )
    for name in ("observed", "weights at t = 1", "MSE to true", "/ persistence", "acc", "loss"):
        out.add_column(
            name, justify="left" if name == "weights at t = 1" else "right", no_wrap=True
        )

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None or x != x else format(x, fmt)

    for f in sorted(set(table["observed_fraction"].to_list())):
        rows = table.filter(pl.col("observed_fraction") == f).to_dicts()
        first = rows[0]
        label = f"{f:g} (k={first['k']})"
        persistence_mse = (
            first["mse_final"] / first["rel_mse_persistence"]
            if first["rel_mse_persistence"]
            else None
        )
        out.add_row(
            label,
            "last checkpoint w_k",
            num(persistence_mse, ".3g"),
            "1",
            num(first["last_observed_acc"], ".3f"),
            num(first["last_observed_loss"], ".4g"),
        )
        for r in rows:
            out.add_row(
                "",
                f"forecast: {r['method']}",
                num(r["mse_final"], ".3g"),
                num(r["rel_mse_persistence"], ".3g"),
                num(r["downstream_acc"], ".3f"),
                num(r["downstream_loss"], ".4g"),
            )
        out.add_row(
            "",
            "true final w_M",
            "0",
            "0",
            num(first["true_final_acc"], ".3f"),
            num(first["true_final_loss"], ".4g"),
            end_section=True,
        )
    out.caption = (
        "/ persistence: the forecast's MSE over the last checkpoint's (below 1 is better than "
        "stopping at w_k); acc/loss: held-out, of the task network (dataset runs only)"
    )
    return out


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
    """A rich progress bar; yields the ``progress(done, total)`` callback gfm's loops report to.

    Off a terminal (output to a file, a DVC stage, CI) a bar draws nothing until it ends, so
    there it prints a line at each tenth of the work and at least every 30 seconds instead.
    """
    if not console.is_terminal:
        yield _progress_lines(description)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _progress_lines(description: str, every_s: float = 30.0) -> Callable[[int, int], None]:
    """``progress(done, total)`` printing ``description: done/total (pct) after s`` lines."""
    start = time.monotonic()
    last = {"tenth": -1, "at": start}

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        tenth = 10 * done // max(total, 1)
        if tenth > last["tenth"] or now - last["at"] >= every_s or done == total:
            last.update(tenth=tenth, at=now)
            pct = 100 * done / max(total, 1)
            console.print(f"{description}: {done}/{total} ({pct:.0f}%) after {now - start:.0f} s")

    return update


def fitting_columns(
    rows: list[dict], columns: list[str], width: int
) -> tuple[list[str], list[str]]:
    """The leading ``columns`` whose cells fit side by side in ``width`` characters, and the rest.

    Each column takes its widest cell or header (``cell`` text) plus rich's 3 characters of
    padding and border; the first column is always shown.
    """
    shown: list[str] = []
    used = 1  # the table's left border
    for c in columns:
        need = max([len(c), *(len(cell(r[c], c)) for r in rows)]) + 3
        if shown and used + need > width:
            break
        shown.append(c)
        used += need
    return shown, columns[len(shown) :]
