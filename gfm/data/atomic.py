"""Files on disk: atomic writes (a temporary beside the target, fsynced, renamed over it), JSON."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "atomic_write_bytes", "read_json_object", "write_json"]


def _fsync_dir(folder: Path) -> None:
    # Make a rename durable; not every platform (or file system) lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    # Same folder (so os.replace is a rename on one file system), hidden, unique per process.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Whatever the block writes to the yielded path is fsynced and renamed over ``path`` with
    ``os.replace``, so readers see either the old file or the complete new one. If the block
    raises, the temporary file is removed and ``path`` is untouched; an ``OSError`` that names
    no file (a full disk's ENOSPC from ``write``) is raised again naming ``path``.

    Args:
        path: the destination file; its folder is created if missing.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno is not None and not err.filename:  # e.g. ENOSPC from write(): name the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def write_json(path: str | Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON (a trailing newline) atomically; return the path."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return path


def read_json_object(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A JSON object read from ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, or not an object; the message names the file and ``what``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} must be valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(doc).__name__}")
    return doc


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to build a folder at; on success it replaces ``path``.

    The block creates the folder at the yielded path (which does not exist yet) and fills it;
    then the old ``path`` (if any) is renamed aside, the new one renamed in and the old one
    removed, so readers see the old folder or the complete new one. If the block raises, what
    it built is removed and ``path`` is untouched.

    Args:
        path: the destination folder; its parent is created if missing.

    Yields:
        The path of the folder to build (on the same file system as ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp = work / path.name
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        if not tmp.is_dir():
            raise FileNotFoundError(f"{tmp}: the block must create the folder it was given")
        for file in (f for f in tmp.rglob("*") if f.is_file()):
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        moved = path.exists()
        if moved:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:
                os.replace(old, path)  # put the previous folder back
            raise
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
