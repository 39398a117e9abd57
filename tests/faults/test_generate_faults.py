"""Two generations of one dataset folder (issue 15, item 10): the dataset folder's lock lets one
write and stops the other at once, naming the holder; a holder that dies leaves nothing that
blocks. Real processes hold and contend for the real lock; the dataset is checked afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gfm.config import Settings
from gfm.data.generate import generate
from gfm.data.lock import DatasetLocked, dataset_lock, lock_path
from gfm.data.validate import validate
from tests.faults.helpers import gfm, gfm_env, snapshot

pytestmark = pytest.mark.faults

# 15 runs of a 5-parameter least-squares problem: a dataset in about 2 s
HOLD = """\
import sys
from pathlib import Path
from gfm.data.lock import dataset_lock

with dataset_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


def hold(root: Path) -> subprocess.Popen[str]:
    """Another process holding the dataset's lock, once this returns."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=gfm_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def leftovers(folder: Path) -> list[str]:
    """What a generation may leave beside the dataset: staging, old copy, lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".data"))


@pytest.mark.fault(
    "item 10: a second gfm generate of the same folder",
    "exits at once naming the holder; the first's dataset kept",
)
@pytest.mark.slow
def test_a_second_generate_exits_at_once_naming_the_holder(
    kept: Callable[..., None], micro: Settings
) -> None:
    root = micro.data.root
    before = snapshot(root)
    holder = hold(root)
    try:
        status, lines = gfm("generate", "--no-dvc", cwd=root.parent, timeout=120)
        assert status == 1, lines
        i = lines.index("gfm generate failed")
        assert lines[i + 1] == (
            f"{root}: another `gfm generate` (pid {holder.pid} on {socket.gethostname()}) is "
            f"writing this dataset; wait for it to finish or stop it, then run again "
            f"(lock file {lock_path(root)})"
        )
        assert not any("planned" in line for line in lines)  # nothing was trained
        kept(before, snapshot(root), exact=True)
        assert validate(root) == []
        assert leftovers(root.parent) == [".data.lock"]  # the holder's, no staging
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    assert leftovers(root.parent) == []  # the holder removed its lock file


@pytest.mark.fault(
    "item 10: the dataset lock taken from another process", "refused, naming pid and host"
)
def test_the_lock_refuses_a_second_holder_in_another_process(tmp_path: Path) -> None:
    root = tmp_path / "data"
    holder = hold(root)
    try:
        with pytest.raises(DatasetLocked, match=rf"\(pid {holder.pid} on "), dataset_lock(root):
            pass
    finally:
        holder.communicate("", timeout=30)
    with dataset_lock(root) as path:  # free again once the holder is gone
        assert path.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    assert not lock_path(root).exists()


@pytest.mark.fault(
    "item 10: the lock holder killed by SIGKILL",
    "its stale lock file does not block the next generation",
)
@pytest.mark.slow
def test_a_killed_holder_leaves_a_lock_file_that_does_not_block(
    kept: Callable[..., None], micro: Settings
) -> None:
    root = micro.data.root
    before = snapshot(root)
    holder = hold(root)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock_path(root).is_file()  # stale: its process is gone, and with it the lock
    report = generate(micro.data, workers=1)
    assert (report.planned, report.skipped, report.trained) == (15, 15, 0)
    kept(before, snapshot(root), exact=True)
    assert validate(root) == []
    assert leftovers(root.parent) == []
