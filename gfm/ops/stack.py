"""A local team stack: an MLflow server on this machine's PostgreSQL, optionally a Prefect server.

``gfm stack up`` (or ``scripts/team-stack up``) creates the databases if missing, starts the
servers in the background with a pid file and a log each under ``state_dir``, waits until they
answer and returns their URLs; ``down`` stops them, ``status`` tells whether they answer. The
servers bind loopback only unless ``allow_remote`` is given: an MLflow or Prefect server has no
authentication of its own, so exposing one is a decision, not a default (docs/team.md).

A database password never reaches a command line (``ps`` shows every user's) or a message: the
MLflow server gets its backend store URI in its environment (``MLFLOW_BACKEND_STORE_URI``, which
only its owner can read in ``/proc``), messages carry URLs through ``redact``, and a state
folder it creates (0700) and the servers' logs (0600) are the owner's alone (issue 15, item 8).

An edge module: it runs ``mlflow server`` and ``prefect server start`` as commands and speaks
to PostgreSQL with psycopg; it imports neither mlflow nor prefect.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from gfm.services import redact  # re-exported: the stack's URLs are printed through it

__all__ = [
    "Service",
    "check_host",
    "create_database",
    "database_exists",
    "down",
    "drop_database",
    "passwords",
    "redact",
    "scrub",
    "status",
    "up",
]

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


@dataclass(frozen=True)
class Service:
    """One server of the stack.

    Attributes:
        name: ``mlflow`` or ``prefect``.
        url: where it answers (``http://127.0.0.1:5000``).
        pid: its process id, None when not running.
        healthy: whether it answered its health check.
        log: its log file.
    """

    name: str
    url: str
    pid: int | None
    healthy: bool
    log: Path


def check_host(host: str, *, allow_remote: bool = False) -> None:
    """Refuse to bind anything but loopback unless ``allow_remote``.

    Raises:
        ValueError: ``host`` is not a loopback address or name; the message says how to allow it.
    """
    if allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback:
        raise ValueError(
            f"--host: the stack binds loopback only (127.0.0.1, ::1, localhost), got {host!r}; "
            f"the servers have no authentication: pass --allow-remote to expose them anyway "
            f"(see docs/team.md)"
        )


# ----------------------------------------------------------------------------- PostgreSQL


def _libpq(url: str, database: str | None = None) -> str:
    """``postgresql+psycopg://u@h:5432/db`` -> ``postgresql://u@h:5432/<database or db>``."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgresql"):
        raise ValueError(f"a PostgreSQL URL must start with postgresql, got {redact(url)!r}")
    path = parts.path if database is None else f"/{database}"
    return urlunsplit(("postgresql", parts.netloc, path, parts.query, ""))


def _database(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise ValueError(f"the URL must name a database (`.../gfm_optuna`), got {redact(url)!r}")
    return name


def _admin(url: str):  # noqa: ANN202 - a psycopg connection, imported lazily
    import psycopg

    try:
        return psycopg.connect(_libpq(url, "postgres"), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        raise ConnectionError(
            f"PostgreSQL at {urlsplit(url).hostname}:{urlsplit(url).port or 5432} does not "
            f"answer ({str(err).strip().splitlines()[0]}); start it or fix the URL"
        ) from None


def database_exists(url: str) -> bool:
    """Whether the database named in ``url`` exists on its server."""
    with _admin(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [_database(url)])
        return row.fetchone() is not None


def create_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; True when it was created.

    Raises:
        ConnectionError: the server does not answer.
    """
    from psycopg import sql

    name = _database(url)
    with _admin(url) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def drop_database(url: str) -> None:
    """Drop the database named in ``url`` (closing its connections first), if it exists."""
    from psycopg import sql

    with _admin(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(_database(url))
            )
        )


# ----------------------------------------------------------------------------- servers


def _alive(pid: int) -> bool:
    try:  # our own child (started by `up` in this process): reap it once it has exited
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


HEALTH = {"mlflow": "/health", "prefect": "/api/health"}


def passwords(url: str) -> list[str]:
    """The password in ``url`` as written and percent-decoded (none: ``[]``)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True) if password else []


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _private_log(path: Path) -> int:
    """Open ``path`` to append, readable by its owner only (0600, an older log's mode too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _start(  # noqa: PLR0913 - keyword-only after the command
    name: str,
    cmd: list[str],
    url: str,
    state_dir: Path,
    *,
    timeout_s: float,
    secret_env: Mapping[str, str] | None = None,
) -> Service:
    """Start ``cmd`` in its own session, logging to ``state_dir/<name>.log``; wait until it answers.

    The pid and URL are written to ``<name>.pid`` and ``<name>.url`` for ``status`` and ``down``.
    ``secret_env`` (a URL with a password) goes into the server's environment, never onto its
    command line; the password is replaced by ``***`` in the log tail a failure quotes.
    """
    pid_file, log = state_dir / f"{name}.pid", state_dir / f"{name}.log"
    secrets = [p for value in (secret_env or {}).values() for p in passwords(value)]
    health = url + HEALTH[name]
    running = _read_pid(pid_file)
    if running is not None:
        return Service(name, url, running, _answers(health), log)
    env = {
        # MLflow's job runner (GenAI evaluation, trace roll-ups: unused by gfm) is about eight
        # more processes of 300 MB each; it stays off unless the environment turns it on
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(secret_env or {}),
    }
    with os.fdopen(_private_log(log), "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: `down` stops its workers too
        )
    pid_file.write_text(f"{proc.pid}\n")
    (state_dir / f"{name}.url").write_text(url + "\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            tail = scrub(log.read_text(errors="replace"), secrets)[-2000:]
            raise RuntimeError(f"{name} server exited with {proc.returncode}; {log}:\n{tail}")
        if _answers(health):
            return Service(name, url, proc.pid, True, log)
        time.sleep(0.5)
    _stop(pid_file)
    raise RuntimeError(f"{name} server did not answer {health} in {timeout_s:.0f} s; see {log}")


def _stop(pid_file: Path, timeout_s: float = 20.0) -> bool:
    pid = _read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # the session `_start` created: the server and its workers
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            return True
    return True


def up(  # noqa: PLR0913 - keyword-only, one per `gfm stack up` option
    *,
    database_url: str,
    optuna_url: str | None,
    artifacts: Path,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    prefect_port: int | None = None,
    allow_remote: bool = False,
    timeout_s: float = 120.0,
    mlflow_workers: int = 2,
) -> list[Service]:
    """Start the stack (idempotent: a server already running is kept).

    Args:
        database_url: MLflow's backend store, ``postgresql+psycopg://user@host:5432/gfm_mlflow``;
            the database is created if missing.
        optuna_url: Optuna's storage, created if missing too (None: none).
        artifacts: the folder the MLflow server stores artifacts in (``--artifacts-destination``;
            an ``s3://`` URL works as well, see docs/team.md).
        state_dir: where pid files and logs go.
        host: the interface the servers bind; loopback unless ``allow_remote``.
        port: the MLflow server's port.
        prefect_port: also start ``prefect server start`` on this port (None: no Prefect server).
        allow_remote: allow a non-loopback ``host``.
        timeout_s: how long each server may take to answer.
        mlflow_workers: the MLflow server's worker processes.

    Returns:
        The servers, MLflow first.

    Raises:
        ValueError: a non-loopback host without ``allow_remote``.
        ConnectionError: PostgreSQL does not answer.
        RuntimeError: a server exited or did not answer in time (the message has its log's tail).
    """
    check_host(host, allow_remote=allow_remote)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_database(database_url)
    if optuna_url is not None:
        create_database(optuna_url)
    if "://" not in str(artifacts):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    # an unspecified address binds every interface; others reach it by this machine's name
    url_host = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    url_host = f"[{url_host}]" if ":" in url_host else url_host
    mlflow_cmd = [  # the backend store (a password in it) goes by environment, not on argv
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(mlflow_workers),
    ]
    services = [
        _start(
            "mlflow",
            mlflow_cmd,
            f"http://{url_host}:{port}",
            state_dir,
            timeout_s=timeout_s,
            secret_env={"MLFLOW_BACKEND_STORE_URI": database_url},
        )
    ]
    if prefect_port is not None:
        prefect_cmd = [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            host,
            "--port",
            str(prefect_port),
        ]
        prefect_url = f"http://{url_host}:{prefect_port}"
        services.append(_start("prefect", prefect_cmd, prefect_url, state_dir, timeout_s=timeout_s))
    return services


def down(state_dir: Path) -> list[str]:
    """Stop the servers ``up`` started from ``state_dir``; returns the names of those stopped."""
    return [name for name in ("prefect", "mlflow") if _stop(state_dir / f"{name}.pid")]


def status(state_dir: Path) -> list[Service]:
    """The servers ``up`` started from ``state_dir``: pid (None: not running), whether they answer."""
    out = []
    for name in ("mlflow", "prefect"):
        url_file = state_dir / f"{name}.url"
        if not url_file.is_file():
            continue
        url = url_file.read_text().strip()
        pid = _read_pid(state_dir / f"{name}.pid")
        healthy = pid is not None and _answers(url + HEALTH[name])
        out.append(Service(name, url, pid, healthy, state_dir / f"{name}.log"))
    return out
