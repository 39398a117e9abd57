"""Secrets (issue 15, item 8): ``gfm stack up`` with database URLs that carry a password starts a
real MLflow server on the local PostgreSQL (``TEST_POSTGRES_URL``; trust auth, so any password
is accepted) and the password appears in no line it, ``status`` or ``down`` print, on no
process's command line (``ps`` shows every user's), and in no file but the owner's alone (0600).
Failures before any server starts name the URL with the password redacted."""

from __future__ import annotations

import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import gfm

pytestmark = [pytest.mark.faults, pytest.mark.slow]

POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
PASSWORD = f"s3cret-{uuid.uuid4().hex[:12]}"  # unique: found nowhere unless this test leaked it


def with_password(url: str, password: str = PASSWORD) -> str:
    """``scheme://user@host/...`` with ``password`` added to the user."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{password}@{host}"


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdlines() -> dict[int, str]:
    """Every process's command line (``ps``'s view), arguments joined by spaces."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:  # ended meanwhile
                continue
            out[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def session_of(pid: int) -> list[int]:
    """The processes of the session ``pid`` leads (the server and its workers)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == pid:  # state ppid pgrp session: the 4th after the name
                members.append(int(entry.name))
    return members


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two database URLs (MLflow's, Optuna's) with ``PASSWORD`` in them, not created yet: ``gfm
    stack up`` creates them; dropped afterwards. Skipped without PostgreSQL outside CI."""
    from gfm.ops import stack

    try:
        stack.database_exists(f"{POSTGRES}/postgres")
    except ConnectionError as err:
        message = f"needs PostgreSQL at {POSTGRES} (TEST_POSTGRES_URL): {err}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message + " -- skipped outside CI, where it fails")
    tag = uuid.uuid4().hex[:8]
    urls = (
        f"{POSTGRES}/gfm_fault_secret_mlflow_{tag}",
        f"{POSTGRES}/gfm_fault_secret_optuna_{tag}",
    )
    yield with_password(urls[0]), with_password(urls[1])
    for url in urls:
        stack.drop_database(url)


@pytest.mark.fault(
    "item 8: `gfm stack up` with MLflow and Optuna database URLs carrying a password",
    "the server runs on the database, and the password is in no output line, no process's "
    "command line, no file but 0600 ones; `gfm stack down` stops every process",
)
def test_stack_up_keeps_the_password_out_of_output_argv_and_files(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    import psycopg

    from gfm.ops.stack import redact

    mlflow_db, optuna_db = databases
    (tmp_path / "params.yaml").write_text(f"team:\n  tune:\n    storage: '{optuna_db}'\n")
    state = tmp_path / "state"
    port = free_port()
    up_status, up_lines = gfm(
        *("stack", "up", "--port", str(port), "--state-dir", str(state)),
        *("--artifacts", str(tmp_path / "artifacts"), "--backend-store-uri", mlflow_db),
        cwd=tmp_path,
        timeout=400,
    )
    pid = None
    try:
        assert up_status == 0, up_lines
        pid = int((state / "mlflow.pid").read_text())
        group = session_of(pid)
        assert pid in group
        seen = cmdlines()
        assert "mlflow" in seen[pid] and "server" in seen[pid]
        leaked = {p: line for p, line in seen.items() if PASSWORD in line}
        assert not leaked, f"the password on a command line: {leaked}"
        _, status_lines = gfm("stack", "status", "--state-dir", str(state), cwd=tmp_path)
        # the server got its backend store from the environment: MLflow's tables are in it
        # (not in a sqlite file MLflow falls back to)
        libpq = mlflow_db.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq, connect_timeout=5) as conn:
            row = conn.execute("SELECT to_regclass('experiments')").fetchone()
        assert row is not None and row[0] == "experiments"
        assert not list(tmp_path.rglob("*.db"))
    finally:
        down_status, down_lines = gfm("stack", "down", "--state-dir", str(state), cwd=tmp_path)
    assert down_status == 0 and down_lines == ["stopped: mlflow"], down_lines
    assert pid is None or not session_of(pid)  # nothing left running
    output = up_lines + status_lines + down_lines
    assert not [line for line in output if PASSWORD in line], output
    assert f"MLflow backend store: {redact(mlflow_db)}; artifacts: {tmp_path / 'artifacts'}" in (
        output
    )
    assert (
        f"# GFM_TEAM__TUNE__STORAGE: as set ({redact(optuna_db)}; the password is not printed)"
        in (output)
    )
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        if path.is_file() and PASSWORD in path.read_text(errors="replace"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((state / "mlflow.log").stat().st_mode) == 0o600


@pytest.mark.fault(
    "item 8: `gfm stack up` refusing a backend store URL with a password (no database named; "
    "not PostgreSQL; PostgreSQL down)",
    "exit 1 or 2, one line naming the URL with the password redacted; nothing started",
)
@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        (
            "postgresql+psycopg://gfm:{pw}@127.0.0.1:5432",
            2,
            "the URL must name a database (`.../gfm_optuna`), got "
            "'postgresql+psycopg://gfm:***@127.0.0.1:5432'",
        ),
        (
            "mysql://gfm:{pw}@127.0.0.1:3306/gfm_mlflow",
            2,
            "a PostgreSQL URL must start with postgresql, got "
            "'mysql://gfm:***@127.0.0.1:3306/gfm_mlflow'",
        ),
        (
            "postgresql+psycopg://gfm:{pw}@127.0.0.1:{port}/gfm_mlflow",
            1,
            "PostgreSQL at 127.0.0.1:",
        ),
    ],
    ids=["no-database", "not-postgresql", "postgresql-down"],
)
def test_stack_up_failures_redact_the_password(
    url: str, status: int, message: str, tmp_path: Path
) -> None:
    url = url.format(pw=PASSWORD, port=free_port())
    (tmp_path / "params.yaml").write_text("{}\n")
    code, lines = gfm(
        *("stack", "up", "--state-dir", str(tmp_path / "state"), "--port", str(free_port())),
        *("--artifacts", str(tmp_path / "artifacts"), "--backend-store-uri", url),
        cwd=tmp_path,
        timeout=120,
    )
    assert code == status, lines
    assert not [line for line in lines if PASSWORD in line], lines
    assert not any(line.startswith("Traceback") for line in lines), lines
    assert lines[0] == "gfm stack up failed" and len(lines) == 2, lines
    assert lines[1].startswith(message), lines
    assert not (tmp_path / "state" / "mlflow.pid").exists()  # no server started
