"""One writer per dataset folder: an exclusive lock file beside it, ``.<name>.lock``.

``gfm generate`` holds it from planning to commit, so a second generation of the same folder
stops at once, naming the holder, instead of training everything again and colliding at the
swap. The lock is the kernel's (``fcntl.flock``): a holder that dies, even by SIGKILL, releases
it, and a lock file left behind by one is taken over. On release the file is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DatasetLocked", "dataset_lock", "lock_path"]


class DatasetLocked(RuntimeError):
    """Another process holds the dataset folder's lock; the message names it and the file."""


def lock_path(root: str | Path) -> Path:
    """The lock file of a dataset folder: ``root.parent / ".<name>.lock"``.

    Outside the folder, beside its staging folder, so DVC never tracks it.
    """
    root = Path(root)
    return root.parent / f".{root.name}.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says ("pid 123 on host").

    The holder writes it just after taking the lock, so a racing reader may find it empty.
    """
    text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    return text or "pid unknown: it is starting"


def _acquire(root: Path, path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock.

    Raises:
        DatasetLocked: another process holds it.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DatasetLocked(
                f"{root}: another `gfm generate` ({holder}) is writing this dataset; wait for it "
                f"to finish or stop it, then run again (lock file {path})"
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


@contextlib.contextmanager
def dataset_lock(root: str | Path) -> Iterator[Path]:
    """Hold the dataset folder's exclusive lock for the ``with`` block; yields the lock file.

    Does not wait: a held lock raises at once. Works between processes of one machine (the
    folder on a local disk; network file systems may not honour ``flock``).

    Raises:
        DatasetLocked: another process holds it; the message names its pid and host.
    """
    root = Path(root)
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(root, path)
    try:
        with contextlib.suppress(OSError):  # a full disk: the lock holds without the holder's name
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before unlocking: a waiter that opened it sees another inode
        os.close(fd)
