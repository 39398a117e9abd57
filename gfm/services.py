"""Team services named by URL: passwords kept out of messages, and a quick check that one answers.

A dead service should cost seconds and one line, not minutes of a client's retries and a
traceback (issue 15, item 5): ``check_listening`` tries a TCP connection to a URL's host and
port before a client library gets the URL.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

__all__ = [
    "ServiceUnavailable",
    "check_listening",
    "check_shared",
    "is_postgres",
    "redact",
    "storage_unreachable",
]

CONNECT_TIMEOUT_S = 5.0  # a service on a team network answers a TCP connect in well under that


class ServiceUnavailable(RuntimeError):
    """A configured service does not answer; the message names the setting, URL and what to check."""


def redact(url: str) -> str:
    """A URL without its password: ``postgresql://u:secret@host/db`` -> ``postgresql://u:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def _address(url: str, default_port: int) -> tuple[str, int]:
    """The host and port a URL points to (``default_port`` when it names none)."""
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:  # a port that is not a number: the client library reports it
        port = default_port
    return parts.hostname or "localhost", port


def check_listening(
    url: str, *, setting: str, what: str, hint: str, timeout: float = CONNECT_TIMEOUT_S
) -> None:
    """Raise at once, in one line, when nothing accepts connections at ``url``'s host and port.

    Args:
        url: the service's URL (``http(s)://`` or ``postgresql(+driver)://``); its password is
            never printed.
        setting: the setting that holds it (``tracking.uri``), named in the message.
        what: the service, as the message names it (``MLflow server``).
        hint: what to check, appended to the message.
        timeout: seconds to wait for the connection.

    Raises:
        ServiceUnavailable: refused, unresolvable host, or no answer within ``timeout``.
    """
    default = {"https": 443, "http": 80}.get(urlsplit(url).scheme, 5432)
    host, port = _address(url, default)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror:
        reason = f"cannot resolve host {host!r}"
    except TimeoutError:
        reason = f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as err:
        reason = f"{host}:{port}: {(err.strerror or str(err)).lower()}"
    raise ServiceUnavailable(f"{setting}: no {what} answers at {redact(url)} ({reason}); {hint}")


def is_postgres(url: str) -> bool:
    """Whether a storage URL names PostgreSQL (any driver: ``postgresql+psycopg://...``)."""
    return url.startswith("postgresql")


def storage_unreachable(url: str, err: Exception) -> str:
    """One line for a PostgreSQL Optuna storage that cannot be opened: the URL, the server's reason.

    ``err`` is SQLAlchemy's ``OperationalError`` (its ``orig`` holds the driver's message).
    """
    first = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
    reason = " ".join(first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").split())
    database = urlsplit(url).path.lstrip("/")
    return (
        f"tune.storage: cannot open the Optuna storage {redact(url)}: {reason}; check that "
        f"PostgreSQL runs at that host and port and that database {database!r} exists "
        f"(`gfm stack up` creates it, or `createdb {database}`), or set tune.storage / "
        f"GFM_TUNE__STORAGE"
    )


def check_shared(storage: str | None) -> None:
    """Several tuning worker processes need PostgreSQL storage (their claims are locked there).

    Raises:
        ValueError: the storage is not a ``postgresql`` URL; the message says what to set.
    """
    if not is_postgres(storage or ""):
        raise ValueError(
            f"tune.storage: several tuning workers need PostgreSQL storage "
            f"(`postgresql+psycopg://user@host:5432/db`, team mode: docs/team.md), "
            f"got {storage!r}; use tune.workers: 1 with sqlite"
        )
