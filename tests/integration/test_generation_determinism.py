"""The dataset's bits do not depend on threads, worker processes, the CPU or what ran before.

Each case is a real ``gfm generate`` (or a library call) in its own process with its own
environment; the files, and so DVC's md5 of the folder, must be identical. "Another CPU"
limits MKL and oneDNN to AVX2, which is what a machine without AVX-512 runs (before the
kernels were pinned, each of the three cases changed the bits on an AVX-512 machine).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONF = Path(__file__).resolve().parents[1] / "confs" / "valid" / "kernels.yaml"
GFM = str(Path(sys.executable).with_name("gfm"))
ONE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
TWO = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "POLARS_MAX_THREADS": "2"}
OTHER_CPU = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# a notebook's process: its kernels were chosen by earlier tensor ops, before gfm pinned them
LIBRARY = (
    "import sys, torch; torch.randn(64, 64) @ torch.randn(64, 64); "
    "from gfm.config import load_settings; from gfm.data.generate import generate; "
    "generate(load_settings(sys.argv[1], {'data.root': sys.argv[2]}, environ={}).data, workers=1)"
)


def _md5s(folder: Path) -> dict[str, str]:
    """md5 per file: equal maps give equal ``dvc add`` md5s of the folder."""
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _generate(root: Path, env: dict[str, str], *, workers: int = 1, library: bool = False) -> None:
    cmd = (
        [sys.executable, "-c", LIBRARY, str(CONF), str(root)]
        if library
        else [GFM, "generate", "--params", str(CONF), "--set", f"data.root={root}"]
        + ["--no-dvc", "--workers", str(workers)]
    )
    clean = {k: v for k, v in os.environ.items() if k not in {*ONE, *OTHER_CPU}}
    proc = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_threads_workers_cpu_and_caller_leave_the_bits_unchanged(tmp_path: Path):
    # given the same settings generated three ways: 1 thread and 1 worker process; 2 threads
    # and 2 worker processes; a library call from a process on "another CPU" (2 threads)
    # whose kernels earlier tensor ops had chosen
    _generate(tmp_path / "one", ONE, workers=1)
    _generate(tmp_path / "two", TWO, workers=2)
    _generate(tmp_path / "other", {**TWO, **OTHER_CPU}, library=True)
    # then every file is byte-identical
    reference = _md5s(tmp_path / "one")
    assert len([f for f in reference if f.startswith("checkpoints/")]) == 12
    for case in ("two", "other"):
        assert _md5s(tmp_path / case) == reference, case
