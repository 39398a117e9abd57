"""The process pool of ``gfm generate``: workers that die with their parent, and a hard stop.

A worker is a spawned interpreter holding torch (about 490 MB). If the ``gfm`` process that
started it dies, it must not train on for minutes nor wait forever for work: each worker asks
the kernel for SIGKILL when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``) and, on every
platform, a watchdog thread ends it once its parent's pid is no longer its parent. When the
parent stops on an error, SIGTERM (``gfm.data.stop``) or Ctrl-C, ``stop_pool`` ends the workers
at once instead of waiting for the runs they are training.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import torch

__all__ = ["init_worker", "stop_pool"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 1.0  # how often the watchdog looks at the parent's pid


def _death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to load, or one without prctl
        return False


def _watch(parent: int) -> None:
    """End this process as soon as ``parent`` is no longer its parent (it died)."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def die_with(parent: int) -> None:
    """Make this process end when ``parent`` (its parent process) dies, even by SIGKILL.

    The parent-death signal is SIGKILL (a worker holds nothing to save: its records go to the
    parent); the watchdog thread covers other platforms and the moment before the signal was
    set up, when the parent may already be gone.
    """
    _death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the kernel knew to tell us
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="gfm-parent-watch", daemon=True).start()


def init_worker(parent: int) -> None:
    """Pool initializer: one torch thread, and die with ``parent`` (the ``gfm`` process's pid)."""
    torch.set_num_threads(1)  # two workers on two cores: no oversubscription
    die_with(parent)


def stop_pool(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """End ``pool`` now: cancel what has not started and terminate the workers mid-run.

    Workers get SIGTERM, then SIGKILL after ``grace`` seconds; the call returns when they are
    gone. ``ProcessPoolExecutor.shutdown`` alone would wait for the runs in flight to finish.
    """
    # the executor keeps its processes in a private dict (Python 3.14 adds terminate_workers)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(grace)
    pool.shutdown(wait=False, cancel_futures=True)
    # Wait for the executor's manager thread to see its workers gone and close its wake-up
    # pipe. Left running, it races the interpreter's exit hook (concurrent.futures'
    # _python_exit), which writes to that pipe as the thread closes it: "OSError: handle is
    # closed" printed after a clean stop (the race CPython gh-125451 closed in later releases).
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(grace)
