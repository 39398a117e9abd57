"""Stopping a generation cleanly on SIGTERM: the signal becomes an exception, except mid-swap.

Python's default for SIGTERM ends the process at once: no ``finally`` runs, so the pool's
workers, the dataset lock and the progress display are left to whoever notices. Inside
``sigterm_raises`` a SIGTERM raises ``Terminated`` in the main thread instead, so the pool is
stopped (``gfm.data.pool.stop_pool``), the lock released and the previous dataset left as it
was; finished runs stay in the staging folder for the next generation to reuse. A
``shielded`` block (the dataset swap: two renames that must both happen) is never cut: a
SIGTERM that arrives inside it is raised when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "shielded", "sigterm_raises"]


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """SIGTERM arrived inside ``sigterm_raises``.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` does not swallow it.

    Attributes:
        after: what a ``shielded`` block completed before the exception was raised (e.g. "the
            new dataset at data was committed"), or None when it came outside one.
    """

    def __init__(self, after: str | None = None) -> None:
        super().__init__("terminated by SIGTERM" + (f" after {after}" if after else ""))
        self.after = after


_depth = 0  # nesting of shielded blocks in progress
_pending = False  # a SIGTERM arrived inside one


def _on_sigterm(signum: int, frame: object) -> None:
    global _pending
    if _depth:
        _pending = True
        return
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``Terminated`` (in the main thread) instead of killing.

    Outside the main thread (where Python cannot handle signals) the block runs unchanged. The
    previous SIGTERM handler is restored at the end.
    """
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending = False


@contextlib.contextmanager
def shielded(done: str) -> Iterator[None]:
    """A block SIGTERM does not interrupt: one that arrives inside is raised when it ends.

    Args:
        done: what the block has completed once it ends, for the ``Terminated`` it may raise
            (``Terminated.after``), e.g. "the new dataset at data was committed".
    """
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending:
        _pending = False
        raise Terminated(done)
