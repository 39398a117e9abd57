"""The ``gfm`` Typer app, its command groups, the options every command shares, settings loading."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler

from gfm.cli.render import console
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
bench_app = typer.Typer(
    help="Benchmarks: `gfm bench jumps` (training steps saved by forecast jumps)."
)
app.add_typer(bench_app, name="bench")

ParamsOpt = Annotated[
    Path,
    typer.Option(
        "--params",
        "-p",
        help="Settings file. None there: the built-in defaults; an empty file is refused "
        "(`{}` in it means every default).",
        show_default=True,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting: `--set data.seeds=8` (repeatable)."),
]


def read_settings(params: Path, overrides: list[str] | None) -> Settings:
    try:
        return load_settings(params, overrides or [])
    except SettingsError as err:
        console.print(f"[red]Invalid settings[/red]\n{err}", highlight=False)
        raise typer.Exit(2) from None


# Seconds the temporary Prefect API (started by the first flow call when PREFECT_API_URL is unset)
# may take to answer its health check. Prefect waits 20 s by default, and on a busy 2-core machine
# a fresh PREFECT_HOME's first start (database migrations) has missed that: `gfm run` then failed
# with "Timed out while attempting to connect to ephemeral Prefect API server" (issue 15, item 15).
EPHEMERAL_STARTUP_TIMEOUT_S = 120
_EPHEMERAL_STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def generous_prefect_startup(environ: dict[str, str] | None = None) -> None:
    """Give the temporary Prefect API at least ``EPHEMERAL_STARTUP_TIMEOUT_S`` to start.

    Sets ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` in ``environ`` (the process's
    environment by default) before prefect is imported, so this process and the ones it starts
    (Dask workers, DVC stages) read it. It is a floor: a larger value of the user's is kept, a
    smaller one raised, since the wait ends as soon as the server is healthy and a shorter one
    only turns a slow start into a failed run. A value that is not an integer is left for
    Prefect to report.
    """
    env = os.environ if environ is None else environ
    current = env.get(_EPHEMERAL_STARTUP, "0").strip() or "0"
    if current.isdigit() and int(current) < EPHEMERAL_STARTUP_TIMEOUT_S:
        env[_EPHEMERAL_STARTUP] = str(EPHEMERAL_STARTUP_TIMEOUT_S)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    # no telemetry and no artifact progress bars from MLflow in a terminal's log
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    generous_prefect_startup()
    logging.basicConfig(
        level=logging.WARNING,  # other libraries: warnings only (Prefect logs on its own)
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    logging.getLogger("gfm").setLevel(logging.DEBUG if verbose else logging.INFO)
