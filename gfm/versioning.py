"""Dataset versioning with DVC: add, push, pull and read the version of the dataset folder.

DVC owns data versions: ``data.dvc`` pins the dataset folder by its md5, the default remote is a
local folder outside the work tree (``data.remote`` in params.yaml; ``s3://…`` and other DVC URLs
work unchanged). This module drives the ``dvc`` command line of the running interpreter's
environment, so it behaves exactly as a user typing the same commands; it is an edge module
(the core library never versions anything itself).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger("gfm.versioning")
REMOTE_NAME = "storage"


class VersioningError(RuntimeError):
    """A DVC command failed; the message carries the command and DVC's own error output."""


def _dvc_executable() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dvc")
    if found:
        return [found]
    return [sys.executable, "-m", "dvc"]


def dvc(
    *args: str, repo: Path, check: bool = True, stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``repo`` (analytics off) and return the finished process.

    The interpreter's own ``bin`` folder leads ``PATH``, so stage commands (``gfm …``) resolve to
    this environment. With ``stream`` the output goes to the terminal instead of being captured.

    Raises:
        VersioningError: the command exited non-zero and ``check`` is true.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    cmd = [*_dvc_executable(), *args]
    log.info("$ dvc %s", " ".join(args))
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=not stream, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n"
            f"{(proc.stderr or '').strip() or (proc.stdout or '').strip()}"
        )
    return proc


def find_repo(path: Path) -> Path | None:
    """The DVC repository (folder holding ``.dvc/``) that contains ``path``, or None."""
    for folder in [path.resolve(), *path.resolve().parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def inside_dvc_stage() -> bool:
    """True while running as a ``dvc repro``/``dvc exp run`` stage command (DVC holds the lock)."""
    return any(k in os.environ for k in ("DVC_STAGE", "DVC_ROOT", "DVC_EXP_BASELINE_REV"))


def ensure_remote(repo: Path, url: str) -> None:
    """Make ``url`` the default remote, stored in ``.dvc/config.local`` (per machine, not in git).

    A local path is expanded (``~``) and created; other URLs (``s3://…``) are passed to DVC as given.
    """
    if "://" not in url:
        folder = Path(url).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        url = str(folder)
    dvc("remote", "add", "--local", "--force", "--default", REMOTE_NAME, url, repo=repo)


def version(dvc_file: Path) -> str:
    """The dataset version: the md5 that ``dvc add`` recorded in ``dvc_file``.

    Raises:
        VersioningError: the file is missing or holds no output md5.
    """
    if not dvc_file.exists():
        raise VersioningError(f"{dvc_file}: not found; run `gfm generate` (or `dvc add`) first")
    doc = yaml.safe_load(dvc_file.read_text()) or {}
    outs = doc.get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise VersioningError(f"{dvc_file}: `outs[0].md5` must be present, got {outs!r}")
    return str(outs[0]["md5"])


def add_and_push(data_dir: Path, remote: str, *, push: bool = True) -> str:
    """Version ``data_dir`` with ``dvc add`` and push it to the default remote.

    Returns:
        The dataset version (md5 recorded in ``<data_dir>.dvc``).
    """
    repo = find_repo(data_dir)
    if repo is None:
        raise VersioningError(f"{data_dir}: not inside a DVC repository (no .dvc/ folder above it)")
    rel = os.path.relpath(data_dir.resolve(), repo)
    dvc("add", rel, repo=repo)
    if push:
        ensure_remote(repo, remote)
        dvc("push", f"{rel}.dvc", repo=repo)
    return version(repo / f"{rel}.dvc")
