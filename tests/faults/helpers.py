"""What the fault tests share: the real ``gfm`` command in its own process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

GFM = Path(sys.executable).parent / "gfm"  # the project environment's console script

# the smallest dataset a fault can hit: 3 least-squares runs of 4 steps
MICRO = """\
data:
  root: data
  seeds: 3
  workers: 1
  schedules: [constant]
  tasks:
    least_squares: {archs: [[]], steps: 4, record_every: 2, batch_sizes: [null], dim: 4, n_train: 16, n_test: 8}
"""


def gfm_env(**extra: str) -> dict[str, str]:
    """The environment of a ``gfm`` subprocess: this one's without ``GFM_*`` overrides, a console
    wide enough that no message wraps, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GFM_")}
    return {**env, "COLUMNS": "1000", "NO_COLOR": "1", **extra}


def gfm(*args: str, cwd: Path, timeout: float = 300, **env: str) -> tuple[int, list[str]]:
    """Run ``gfm *args`` to its end; (exit status, the non-empty lines of stdout + stderr)."""
    proc = subprocess.run(
        [str(GFM), *args],
        cwd=cwd,
        env=gfm_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line.rstrip() for line in lines if line.strip()]


def snapshot(folder: Path) -> dict[str, str]:
    """``{relpath: sha256}`` of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
