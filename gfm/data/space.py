"""A dataset that does not fit: one message with the path, the space needed and the space free.

A full disk (ENOSPC), a full quota (EDQUOT) or the process's file-size limit (EFBIG, ``ulimit
-f``) while a generation writes its runs or commits would otherwise surface as a bare
``OSError: [Errno 28]`` naming no file, and the staging folder it leaves behind would keep the
disk full for every rerun. ``disk_full`` removes the staging folder (its runs train again next
time; committed runs are reused from the dataset itself) and says what to do.
"""

from __future__ import annotations

import errno
import resource
import shutil
from collections.abc import Iterable
from pathlib import Path

from gfm.config import DataSettings
from gfm.data.schema import RunSpec

__all__ = ["DiskFull", "disk_full", "no_space", "plan_bytes"]

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_FLOAT32 = 4
_CURVES = 5 * 8  # a checkpoint's step, lr, train/val loss and val accuracy (8 bytes each)
PER_FILE = 4096  # a run file's metadata (spec, layout, Parquet footer), about a block


class DiskFull(OSError):
    """A dataset write ran out of space, quota or file-size limit.

    The message says where, how much the dataset needs, how much is free and what was cleaned up.
    """


def no_space(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-space error: ENOSPC, EDQUOT or EFBIG."""
    return isinstance(err, OSError) and err.errno in NO_SPACE


def _size(n: float) -> str:
    """``n`` bytes in a readable unit: ``512 B``, ``3.2 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def plan_bytes(specs: Iterable[RunSpec], cfg: DataSettings) -> tuple[int, str]:
    """About how many bytes the run files of ``specs`` take, and how it was counted.

    Each run stores C = steps / record_every + 1 checkpoints of D float32 weights and five
    8-byte curve values, in a file whose metadata takes about ``PER_FILE`` bytes:

        bytes ≈ Σ_runs (C · (4·D + 40) + PER_FILE)

    Returns (bytes, "R runs × C checkpoints × D params × 4 bytes + 4 KiB a file") when every run
    has the same shape, else a summary of the sum.
    """
    from gfm.data.tasks import count_params  # torch: only when a message needs it

    width: dict[tuple[str, tuple[int, ...]], int] = {}
    shapes: dict[tuple[int, int], int] = {}  # (checkpoints, params) -> runs
    for spec in specs:
        key = (spec.task, tuple(spec.hidden))
        if key not in width:
            width[key] = count_params(spec.task, cfg.tasks[spec.task], spec.hidden)
        shape = (spec.steps // spec.record_every + 1, width[key])
        shapes[shape] = shapes.get(shape, 0) + 1
    total = sum(n * (c * (d * _FLOAT32 + _CURVES) + PER_FILE) for (c, d), n in shapes.items())
    per_file = f"{_size(PER_FILE)} a file"
    if len(shapes) == 1:
        ((c, d), n), *_ = shapes.items()
        return total, f"{n} runs × {c} checkpoints × {d} params × {_FLOAT32} bytes + {per_file}"
    n = sum(shapes.values())
    checkpoints = sum(k * c for (c, _), k in shapes.items())
    return total, (
        f"{n} runs, {checkpoints} checkpoints of up to {max(width.values())} params × "
        f"{_FLOAT32} bytes + {per_file}"
    )


def _free(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _file_limit() -> int | None:
    """This process's file-size limit (``ulimit -f``) in bytes, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def disk_full(
    err: OSError,
    root: Path,
    staging: Path | None,
    needed: tuple[int, str] | None,
) -> DiskFull:
    """Clean up after an out-of-space write and say in one line what happened and what to do.

    Removes ``staging`` (the generation's staging folder, which would keep the disk full) and
    returns the error to raise.

    Args:
        err: the out-of-space error (``no_space(err)``).
        root: the dataset folder, left as it was.
        staging: the staging folder to remove, or None.
        needed: ``plan_bytes`` of the plan, or None when unknown.
    """
    path = Path(err.filename) if err.filename else (staging or root)
    if err.errno == errno.EFBIG:
        limit = _file_limit()
        cause = "file too large" + (
            f" for this process's file-size limit of {_size(limit)} (ulimit -f)" if limit else ""
        )
        todo = "raise the limit (ulimit -f unlimited)"
    else:
        cause = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
        todo = "free some space (or point data.root at another disk)"
    free = _free(path)
    need = f"the dataset needs about {_size(needed[0])} ({needed[1]})" if needed else ""
    have = f"{_size(free)} free there" if free is not None else ""
    space = ", ".join(s for s in (need, have) if s)
    removed = ""
    if staging is not None and staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
        if staging.exists():
            removed = f"; could not remove the staging folder {staging}, delete it"
        else:
            now = _free(staging.parent)
            removed = f"; removed the staging folder {staging}" + (
                f" ({_size(now)} free now)" if now is not None else ""
            )
    return DiskFull(
        f"{path}: {cause} while writing the dataset"
        + (f"; {space}" if space else "")
        + removed
        + (f"; the dataset at {root} is unchanged" if root.exists() else "")
        + f"; {todo} and run again"
    )
