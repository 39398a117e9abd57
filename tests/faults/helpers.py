"""What the fault tests share: the real ``gfm`` command in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GFM = Path(sys.executable).parent / "gfm"  # the project environment's console script


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
