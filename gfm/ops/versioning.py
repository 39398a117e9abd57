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
        detail = (proc.stderr or "").strip() or (proc.stdout or "").strip()
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n"
            f"{detail or 'see the output of DVC above'}"
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


def current_version(data_dir: Path) -> str | None:
    """The md5 in ``<data_dir>.dvc`` if that file still describes the folder, else None.

    "Still describes" is checked cheaply, without hashing: the file count and total size that
    ``dvc add`` recorded must match the folder now. A dataset regenerated since the last
    ``dvc add`` (e.g. by ``dvc repro`` before ``gfm run`` versions it) has a stale md5.
    """
    dvc_file = data_dir.with_suffix(".dvc")
    if not dvc_file.is_file() or not data_dir.is_dir():
        return None
    doc = yaml.safe_load(dvc_file.read_text()) or {}
    outs = doc.get("outs") or [{}]
    md5, nfiles, size = outs[0].get("md5"), outs[0].get("nfiles"), outs[0].get("size")
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    if md5 is None or nfiles != len(files) or size != sum(p.stat().st_size for p in files):
        return None
    return str(md5)


def push(data_dir: Path, remote: str) -> None:
    """``dvc push`` the dataset folder's ``.dvc`` file to ``remote`` (made the default remote).

    Raises:
        VersioningError: not inside a DVC repository, or the push failed.
    """
    repo = find_repo(data_dir)
    if repo is None:
        raise VersioningError(f"{data_dir}: not inside a DVC repository (no .dvc/ folder above it)")
    ensure_remote(repo, remote)
    dvc("push", f"{os.path.relpath(data_dir.resolve(), repo)}.dvc", repo=repo)


def stages(repo: Path) -> list[str]:
    """The stage names declared in ``repo/dvc.yaml`` (empty when there is none)."""
    path = repo / "dvc.yaml"
    if not path.is_file():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages") or {})


def outputs(repo: Path, stage: str) -> list[Path]:
    """The outputs, metrics and plots that ``repo/dvc.yaml`` declares for ``stage``."""
    doc = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages") or {}
    items = [i for kind in ("outs", "metrics", "plots") for i in doc.get(stage, {}).get(kind) or []]
    return [repo / (next(iter(i)) if isinstance(i, dict) else i) for i in items]


def _stamps(paths: list[Path]) -> dict[Path, int | None]:
    return {p: p.stat().st_mtime_ns if p.exists() else None for p in paths}


def reproduce(stage: str, repo: Path, *, force: bool = False) -> bool:
    """``dvc repro <stage>``: run it (and stale stages above it) unless it is up to date.

    DVC runs quietly: the stage's own command prints as usual, DVC's hint to ``git add
    dvc.lock`` is left out (``gfm run`` ends with the files to commit instead), and one log
    line says whether the stage ran.

    Args:
        stage: a stage of ``repo/dvc.yaml``.
        repo: the DVC repository.
        force: run the stage even when DVC finds it up to date (``--force``), this stage only:
            the stages above it must be up to date.

    Returns:
        Whether the stage ran (its outputs were written again); False when it was up to date.

    Raises:
        VersioningError: the stage is not in dvc.yaml, or DVC failed.
    """
    if stage not in stages(repo):
        raise VersioningError(
            f"{repo / 'dvc.yaml'}: stage `{stage}` must be declared, got {stages(repo)}"
        )
    before = _stamps(outputs(repo, stage))
    # --single-item: force this stage only (with --force alone DVC reruns the stages above too)
    forced = ["--force", "--single-item"] if force else []
    dvc("repro", "--quiet", *forced, stage, repo=repo, stream=True)
    ran = _stamps(list(before)) != before
    log.info("dvc repro %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


def push_outputs(repo: Path, stage: str, remote: str) -> None:
    """``dvc push <stage>``: the stage's cached outputs to ``remote`` (``dvc status -c`` clean).

    Raises:
        VersioningError: the push failed.
    """
    ensure_remote(repo, remote)
    dvc("push", "--quiet", stage, repo=repo)


def to_commit(repo: Path, paths: list[Path]) -> list[str]:
    """Files under ``paths`` that git sees changed or new: what a run asks the user to commit.

    Empty outside a git repository.
    """
    rel = [os.path.relpath(p.resolve(), repo.resolve()) for p in paths if p.exists()]
    if not rel:
        return []
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *rel],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:  # not a git repository
        return []
    return [line[3:] for line in proc.stdout.splitlines() if line.strip()]


def restore(data_dir: Path, remote: str) -> bool:
    """Pull a missing dataset folder from the remote when ``<data_dir>.dvc`` pins one.

    Returns:
        True when the folder is present afterwards (it was, or the pull succeeded).
    """
    if data_dir.exists():
        return True
    repo = find_repo(data_dir)
    dvc_file = data_dir.with_suffix(".dvc")
    if repo is None or not dvc_file.exists():
        return False
    ensure_remote(repo, remote)
    rel = os.path.relpath(dvc_file.resolve(), repo)
    return dvc("pull", rel, repo=repo, check=False).returncode == 0 and data_dir.exists()


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
