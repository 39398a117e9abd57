"""A dataset that does not fit (issue 15, item 9): one line naming the file, the space the plan
needs and the space free; the staging folder removed, so the next run is not blocked by it; the
previous dataset unchanged.

Two real ways to run out, neither needing root: the process's file-size limit (RLIMIT_FSIZE,
``ulimit -f``: a write past it fails with EFBIG), and a small tmpfs mounted in a user namespace
(``unshare -rm``: writes fail with ENOSPC, as on a full disk), skipped where the kernel or the
container does not allow unprivileged user namespaces."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gfm.config import Settings
from gfm.data.validate import validate
from tests.faults.helpers import GFM, MICRO, gfm_env, snapshot

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# MICRO's 15 runs with 500-dimensional weights: 22 KB checkpoint files
WIDE = MICRO.replace("dim: 4", "dim: 500").replace("steps: 4,", "steps: 20,")
# MICRO with other specs (6 steps): small checkpoint files, an 11 KB runs table at commit
LONGER = MICRO.replace("steps: 4,", "steps: 6,")


def leftovers(folder: Path) -> list[str]:
    """What a generation may leave beside the dataset: staging, old copy, lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".data"))


def generate_limited(tmp: Path, params: str, limit: int) -> tuple[int, list[str]]:
    """``gfm generate`` on ``params`` in a process that may write files of ``limit`` bytes."""
    (tmp / "other.yaml").write_text(params)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [str(GFM), "generate", "--no-dvc", "--params", "other.yaml"],
        cwd=tmp,
        env=gfm_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,  # noqa: PLW1509 - a single-threaded test process starts it
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line.rstrip() for line in lines if line.strip()]


SIZE = r"[0-9.]+ (B|KiB|MiB|GiB)"


def space_line(root: Path, path: str, cause: str, needed: str, todo: str) -> str:
    """A regular expression of the one-line message of an out-of-space generation."""
    staging = root.parent / ".data.partial"
    return (
        rf"{re.escape(path)}: {re.escape(cause)} while writing the dataset; the dataset needs "
        rf"about {re.escape(needed)}, {SIZE} free there; removed the staging folder "
        rf"{re.escape(str(staging))} \({SIZE} free now\); the dataset at {re.escape(str(root))} "
        rf"is unchanged; {re.escape(todo)} and run again"
    )


@pytest.mark.fault(
    "item 9: file-size limit (ulimit -f 16 KiB) hit writing a 22 KB checkpoint file while training",
    "exit 1, one line: the file, EFBIG's limit, space needed and free; staging removed",
)
def test_a_checkpoint_past_the_file_size_limit(micro: Settings, kept) -> None:
    root = micro.data.root
    before = snapshot(root)
    status, lines = generate_limited(root.parent, WIDE, 16 * 1024)
    assert status == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    i = lines.index("gfm generate failed")
    assert len(lines) == i + 2, lines  # the message is the last line
    first = root.parent / ".data.partial" / "checkpoints" / "least_squares-adam-linear-s000.parquet"
    assert re.fullmatch(
        space_line(
            root,
            str(first),
            "file too large for this process's file-size limit of 16.0 KiB (ulimit -f)",
            "389.4 KiB (15 runs × 11 checkpoints × 501 params × 4 bytes + 4.0 KiB a file)",
            "raise the limit (ulimit -f unlimited)",
        ),
        lines[-1],
    ), lines[-1]
    kept(before, snapshot(root))
    assert validate(root) == []
    assert leftovers(root.parent) == []


@pytest.mark.fault(
    "item 9: file-size limit (ulimit -f 8 KiB) hit writing the 11 KB runs table at commit",
    "exit 1 after training, one line naming runs.parquet; staging removed, dataset unchanged",
)
def test_the_runs_table_past_the_file_size_limit_at_commit(micro: Settings, kept) -> None:
    root = micro.data.root
    before = snapshot(root)
    status, lines = generate_limited(root.parent, LONGER, 8 * 1024)
    assert status == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    assert re.fullmatch(
        space_line(
            root,
            str(root.parent / ".data.partial" / "runs.parquet"),
            "file too large for this process's file-size limit of 8.0 KiB (ulimit -f)",
            "63.5 KiB (15 runs × 4 checkpoints × 5 params × 4 bytes + 4.0 KiB a file)",
            "raise the limit (ulimit -f unlimited)",
        ),
        lines[-1],
    ), lines[-1]
    kept(before, snapshot(root))
    assert validate(root) == []
    assert leftovers(root.parent) == []


# Runs inside `unshare -rm` with a small tmpfs mounted at argv[1]: generates MICRO there, fills
# the disk as the case says, generates again, frees the space and generates once more; prints
# what the test checks as JSON (the mount ends with the namespace).
INSIDE = """
import hashlib, json, subprocess, sys
from pathlib import Path

where, gfm, case = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
micro, more = sys.argv[4], sys.argv[5]

def run(params):
    (where / "p.yaml").write_text(params)
    proc = subprocess.run([gfm, "generate", "--no-dvc", "--params", "p.yaml"], cwd=where,
                          capture_output=True, text=True)
    return proc.returncode, [l.rstrip() for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]

def snap():
    root = where / "data"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

def fill(path, leave):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    if leave:
        with open(path, "rb+") as f:
            f.truncate(max(0, path.stat().st_size - leave))

out = {"first": run(micro)}
out["before"] = snap()
if case == "full":  # something else filled the disk but for 8 KiB
    filler = where / "filler"
    fill(filler, 8 * 1024)
else:  # a killed generation's half-written temp file fills it completely
    filler = where / ".data.partial" / "checkpoints" / ".least_squares-adam-linear-s003.parquet.tmp-1-0"
    fill(filler, 0)
out["full"] = run(more)
out["after"] = snap()
out["left"] = sorted(p.name for p in where.iterdir() if p.name.startswith(".data"))
if case == "full":
    filler.unlink()
out["again"] = run(more)
print(json.dumps(out))
"""


def in_small_tmpfs(tmp: Path, case: str) -> dict:
    """Run INSIDE for ``case`` with a 512 KiB tmpfs at ``tmp / "disk"``; what it printed."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux") or unshare is None:
        pytest.skip("needs Linux's unshare for a tmpfs of one's own")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp}"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespace with mounts here: {probe.stderr.strip()}")
    disk = tmp / "disk"
    disk.mkdir()
    more = MICRO.replace("seeds: 3", "seeds: 4")  # 5 more runs, the 15 others reused
    proc = subprocess.run(
        [unshare, "-rm", "sh", "-c", 'mount -t tmpfs -o size=512k tmpfs "$1" && shift && exec "$@"']
        + ["sh", str(disk), sys.executable, "-c", INSIDE, str(disk), str(GFM), case, MICRO, more],
        env=gfm_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def check_no_space(out: dict, kept, disk: Path) -> None:
    """The out-of-space generation failed in one line and left nothing; the next one worked."""
    assert out["first"][0] == 0, out["first"]
    status, lines = out["full"]
    assert status == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    i = lines.index("gfm generate failed")
    assert len(lines) == i + 2, lines
    root = disk / "data"
    staging = disk / ".data.partial"
    assert re.fullmatch(
        rf"{re.escape(str(staging))}/\S+: no space left on device while writing the dataset; "
        r"the dataset needs about 83.5 KiB \(20 runs × 3 checkpoints × 5 params × 4 bytes \+ "
        rf"4.0 KiB a file\), {SIZE} free there; removed the staging folder "
        rf"{re.escape(str(staging))} \({SIZE} free now\); the dataset at {re.escape(str(root))} "
        r"is unchanged; free some space \(or point data.root at another disk\) and run again",
        lines[-1],
    ), lines[-1]
    kept(out["before"], out["after"])
    assert out["left"] == []  # no staging folder filling the disk, no lock file
    assert out["again"][0] == 0, out["again"]  # the next run is not blocked by anything left
    assert "planned 20, reused 15, trained 5" in " ".join(out["again"][1])


@pytest.mark.fault(
    "item 9: disk full (a 512 KiB tmpfs, 8 KiB left) while generating 5 more runs",
    "exit 1, one line: file, space needed and free; staging removed; rerun works once freed",
)
def test_a_full_disk_during_generation(tmp_path: Path, kept) -> None:
    out = in_small_tmpfs(tmp_path, "full")
    check_no_space(out, kept, tmp_path / "disk")


@pytest.mark.fault(
    "item 9: disk filled by a killed generation's leftover staging folder, then `gfm generate` again",
    "exit 1 with one line and the stale staging removed; the run after that works",
)
def test_a_stale_staging_folder_that_fills_the_disk(tmp_path: Path, kept) -> None:
    out = in_small_tmpfs(tmp_path, "stale")
    check_no_space(out, kept, tmp_path / "disk")
