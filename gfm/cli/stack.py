"""`gfm stack up|down|status`: a local team stack on loopback (docs/team.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gfm.cli._app import ParamsOpt, SetOpt, read_settings, stack_app
from gfm.cli.render import console, fail

# ----------------------------------------------------------------------------- team stack

STATE_DIR = Path("~/.cache/gfm/team")
StateOpt = Annotated[Path, typer.Option(help="Where pid files and logs go.", show_default=True)]


@stack_app.command("up")
def stack_up(  # noqa: PLR0913 - typer: one parameter per command-line option
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

    from gfm.ops import stack

    cfg = read_settings(params, set_)
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
        raise fail("gfm stack up", _scrubbed(err, backend_store_uri, storage), code=2) from None
    except (ConnectionError, RuntimeError) as err:
        raise fail("gfm stack up", _scrubbed(err, backend_store_uri, storage)) from None
    table = Table(title="gfm team stack", show_header=True, title_justify="left")
    for column in ("server", "url", "pid", "log"):
        table.add_column(column, overflow="fold")
    for s in services:
        table.add_row(s.name, s.url, str(s.pid), str(s.log))
    console.print(table)
    console.print(
        f"MLflow backend store: {stack.redact(backend_store_uri)}; artifacts: {dest}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    lines = ["export GFM_TEAM__ENABLED=true", f"export GFM_TEAM__TRACKING__URI={services[0].url}"]
    if stack.passwords(storage):  # never printed: keep the value set in params or the environment
        lines.append(
            f"# GFM_TEAM__TUNE__STORAGE: as set ({stack.redact(storage)}; the password is not "
            "printed)"
        )
    elif storage:
        lines.append(f"export GFM_TEAM__TUNE__STORAGE={storage}")
    if prefect:
        lines.append(f"export PREFECT_API_URL={services[1].url}/api")
    console.print("Team mode for this shell:\n" + "\n".join(lines), highlight=False, soft_wrap=True)


def _scrubbed(err: BaseException, *urls: str) -> str:
    """``err``'s message without the password of any of ``urls`` (a driver may quote one)."""
    from gfm.ops import stack

    return stack.scrub(str(err), [p for url in urls for p in stack.passwords(url)])


@stack_app.command("down")
def stack_down(state_dir: StateOpt = STATE_DIR) -> None:
    """Stop the servers `gfm stack up` started: `gfm stack down`; their data stays in PostgreSQL."""
    from gfm.ops import stack

    stopped = stack.down(state_dir.expanduser())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(state_dir: StateOpt = STATE_DIR) -> None:
    """Show the servers `gfm stack up` started, and whether they answer: `gfm stack status`."""
    from gfm.ops import stack

    services = stack.status(state_dir.expanduser())
    if not services:
        console.print("no team stack was started from " + str(state_dir))
        raise typer.Exit(1)
    for s in services:
        state = "[green]up[/green]" if s.healthy else "[red]down[/red]"
        console.print(f"{s.name}: {state} {s.url} (pid {s.pid}, log {s.log})")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)
