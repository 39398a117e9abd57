"""Killing `gfm generate` (issue 15, item 7): its pool workers die with it, and SIGTERM stops it
cleanly. A real ``gfm generate --workers 2`` is killed while its workers start or train; every
process it started must be gone within seconds, the previous dataset unchanged. SIGTERM while
the dataset is committed is raised in-process at a chosen point of the commit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gfm.data.writer
from gfm.config import Settings
from gfm.data.format import read_manifest
from gfm.data.generate import generate
from gfm.data.lock import dataset_lock, lock_path
from gfm.data.stop import Terminated, sigterm_raises
from gfm.data.validate import validate
from tests.faults.helpers import GFM, MICRO, gfm_env, snapshot

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes in /proc"),
]

# 15 runs of a few seconds each: long enough to kill the pool while it trains
SLOW = MICRO.replace("steps: 4, record_every: 2", "steps: 2500, record_every: 500")
GONE_WITHIN = 10.0  # seconds the workers may outlive their parent


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """``{pid: start time}`` of every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[2]
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def survivors(processes: dict[int, int]) -> list[int]:
    """The processes of ``processes`` still running (a zombie, dead but not reaped, is gone)."""
    alive = []
    for pid, start in processes.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] not in "ZX":
            alive.append(pid)
    return alive


def workers(processes: dict[int, int]) -> list[int]:
    """The pool workers among ``processes`` (spawned interpreters)."""
    out = []
    for pid in processes:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def staged_runs(root: Path) -> list[Path]:
    """Finished runs in the staging folder of ``root``."""
    return sorted((root.parent / f".{root.name}.partial" / "checkpoints").glob("[!.]*.parquet"))


def kill_generate(
    tmp: Path, sig: signal.Signals, when: str
) -> tuple[int, list[str], dict[int, int], set[int]]:
    """Start ``gfm generate --workers 2`` on SLOW in ``tmp``, send ``sig`` once its workers
    exist (``when="start"``) or once a run has finished (``"training"``), and wait until it exits.

    Returns:
        (exit status, output lines, ``{pid: start}`` of every process it had started, the pids
        of its pool workers among them)
    """
    (tmp / "slow.yaml").write_text(SLOW)
    log = tmp / "generate.log"
    with log.open("w") as out:  # not a pipe: a surviving worker would hold it open
        proc = subprocess.Popen(
            [str(GFM), "generate", "--no-dvc", "--params", "slow.yaml", "--workers", "2"],
            cwd=tmp,
            env=gfm_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started: dict[int, int] = {}
    pool: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:
            started.update(descendants(proc.pid))
            pool.update(workers(started))
            ready = len(pool) >= 2 and (when == "start" or staged_runs(tmp / "data") != [])
            if ready:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the pool never got to {when}: {log.read_text()}"
            time.sleep(0.1)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line.rstrip() for line in log.read_text().splitlines() if line.strip()]
    return proc.returncode, lines, started, pool


def wait_gone(processes: dict[int, int]) -> list[int]:
    """Wait up to GONE_WITHIN seconds for ``processes`` to end; those still running."""
    deadline = time.monotonic() + GONE_WITHIN
    while (alive := survivors(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:  # leave nothing behind for the next test, whatever this one says
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.mark.parametrize(
    "sig, when",
    [
        pytest.param(
            signal.SIGKILL,
            "training",
            marks=pytest.mark.fault(
                "item 7: SIGKILL of `gfm generate --workers 2` while its workers train",
                f"every worker gone within {GONE_WITHIN:.0f} s, previous dataset unchanged",
            ),
            id="sigkill-training",
        ),
        pytest.param(
            signal.SIGTERM,
            "training",
            marks=pytest.mark.fault(
                "item 7: SIGTERM of `gfm generate --workers 2` while its workers train",
                "exit 143 with one line, workers gone, dataset unchanged, finished runs staged",
            ),
            id="sigterm-training",
        ),
        pytest.param(
            signal.SIGKILL,
            "start",
            marks=pytest.mark.fault(
                "item 7: SIGKILL of `gfm generate --workers 2` while its workers start",
                f"every worker gone within {GONE_WITHIN:.0f} s, previous dataset unchanged",
            ),
            id="sigkill-start",
        ),
        pytest.param(
            signal.SIGTERM,
            "start",
            marks=pytest.mark.fault(
                "item 7: SIGTERM of `gfm generate --workers 2` while its workers start",
                "exit 143 with one line, workers gone, dataset unchanged",
            ),
            id="sigterm-start",
        ),
    ],
)
def test_killing_generate_leaves_no_worker_and_the_dataset_unchanged(
    micro: Settings, kept, sig: signal.Signals, when: str
) -> None:
    root = micro.data.root
    before = snapshot(root)
    status, lines, started, pool = kill_generate(root.parent, sig, when)
    assert len(pool) >= 2 and pool <= started.keys(), (pool, started)
    assert wait_gone(started) == [], f"outlived `gfm generate` by {GONE_WITHIN} s: {lines}"
    kept(before, snapshot(root))
    assert validate(root) == []
    assert not (root.parent / ".data.old").exists()
    with dataset_lock(root):  # nobody holds the lock any more
        pass
    if sig == signal.SIGKILL:
        assert status == -signal.SIGKILL
        return
    assert not any("Traceback" in line for line in lines), lines
    assert status == 143, lines
    staged = staged_runs(root)
    expected = f"gfm generate stopped by SIGTERM: the dataset at {root} is unchanged"
    if staged:
        expected += (
            f"; the {len(staged)} run(s) finished so far stay in {root.parent / '.data.partial'} "
            "and the next `gfm generate` reuses them"
        )
    assert lines[-1] == expected
    assert when == "start" or staged, "a run had finished before SIGTERM"


def _sigterm_at(monkeypatch: pytest.MonkeyPatch, name: str, wrapped: str) -> None:
    """Make ``gfm.data.writer``'s ``name`` send this process SIGTERM right after it handles
    ``wrapped`` (a file or folder name), as a SIGTERM arriving at that moment would."""
    module = os if name == "replace" else gfm.data.writer
    real = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        if any(Path(str(a)).name == wrapped for a in args):
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(module, name, wrapper)


@pytest.mark.fault(
    "item 7: SIGTERM while the commit writes the dataset's tables (before the swap)",
    "Terminated, previous dataset unchanged, staged runs reused by the next generate",
)
def test_sigterm_while_committing_keeps_the_previous_dataset(
    micro: Settings, kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = micro.data.root
    before = snapshot(root)
    more = micro.data.model_copy(update={"seeds": 4})  # 5 new runs
    _sigterm_at(monkeypatch, "atomic_write_bytes", "runs.parquet")
    with pytest.raises(Terminated) as info, sigterm_raises():
        generate(more, workers=1)
    assert info.value.after is None
    kept(before, snapshot(root))
    assert validate(root) == [] and not lock_path(root).exists()
    monkeypatch.undo()
    report = generate(more, workers=1)
    assert (report.planned, report.trained) == (20, 0)  # every run came from staging
    assert validate(root) == [] and read_manifest(root).counts.runs == 20


@pytest.mark.fault(
    "item 7: SIGTERM between the two renames of the dataset swap",
    "the swap completes first: the new dataset is whole, no .data.old, then Terminated",
)
def test_sigterm_during_the_swap_waits_for_it(
    micro: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = micro.data.root
    more = micro.data.model_copy(update={"seeds": 4})
    _sigterm_at(monkeypatch, "replace", ".data.old")  # root -> .data.old, the first rename
    with pytest.raises(Terminated) as info, sigterm_raises():
        generate(more, workers=1)
    monkeypatch.undo()
    assert info.value.after == f"the new dataset at {root} was committed"
    assert validate(root) == [] and read_manifest(root).counts.runs == 20
    leftovers = sorted(p.name for p in root.parent.iterdir() if re.match(r"\.data\.", p.name))
    assert leftovers == []
