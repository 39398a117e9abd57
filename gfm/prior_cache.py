"""A folder of fitted priors (``gfm.prior.quadfit``) shared by the processes of one workflow.

The tuning trials, the training's batch-drawing worker and its validation forecasts fit the prior
of the same (run, observed checkpoint, parameters) again and again, each in its own process; the
fit is most of the cost of drawing a batch. The cache keeps, per fit, only what the solve found:
x = (log h, z[, log σ]) and the residual per parameter (a few floats each; the path is simulated
from x again, so a cached fit gives the same forecast as a fresh one).

One file per fit, ``<root>/<key[:2]>/<key>.npz``, the key a digest of everything the fit reads:
the prefix's weights of those parameters, the learning rates, the optimizer and its
hyperparameters, the parameter indices and the fit's settings and version. An entry is written
to a temporary file and renamed, so concurrent writers of the same fit leave one whole file; an
entry that cannot be read or does not fit is a miss (fitted again and rewritten), never an error.
Deleting the folder at any time is safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np
import torch

from gfm.forecaster import Prefix

__all__ = ["exists", "key", "load", "store"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def key(prefix: Prefix, index: torch.Tensor | None, settings: tuple) -> str:
    """Hex digest of a fit's inputs: weights w_0..w_k of the parameters, lr, optimizer, settings."""
    h = hashlib.blake2b(digest_size=16)
    meta = [prefix.optimizer, sorted(prefix.hparams.items()), prefix.record_every, prefix.M]
    h.update(json.dumps([meta, prefix.k, repr(settings)], default=str).encode())
    h.update(np.ascontiguousarray(prefix.lr.numpy()).tobytes())
    index = torch.arange(prefix.D) if index is None else index.long()  # None: all, as arange
    h.update(np.ascontiguousarray(prefix.w[:, index].numpy()).tobytes())
    h.update(np.ascontiguousarray(index.numpy()).tobytes())
    return h.hexdigest()


def _path(root: Path, digest: str) -> Path:
    return Path(root) / digest[:2] / f"{digest}.npz"


def exists(root: Path, digest: str) -> bool:
    """Whether the fit ``digest`` has an entry (not whether it reads: ``load`` decides that)."""
    return _path(root, digest).is_file()


def load(root: Path, digest: str, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (x (n, P), residual (n,)) of the fit ``digest``, or None when absent or unfit."""
    path = _path(root, digest)
    try:
        with np.load(path) as f:
            x, fit = f["x"], f["fit"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    ok = x.ndim == 2 and x.shape[0] == n and x.shape[1] in (2, 3) and fit.shape == (n,)
    if not ok or x.dtype != np.float64 or fit.dtype != np.float64:
        return None
    return torch.from_numpy(x), torch.from_numpy(fit)


def store(root: Path, digest: str, x: torch.Tensor, fit: torch.Tensor) -> None:
    """Write a fit to the cache (temporary file, then rename); a failed write is skipped."""
    path = _path(root, digest)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, x=x.numpy(), fit=fit.numpy())
        os.replace(tmp, path)
    except OSError as err:  # a full or read-only disk costs the cache, not the fit
        with contextlib.suppress(OSError):
            tmp.unlink()
        if str(root) not in _warned:
            _warned.add(str(root))
            log.warning("prior cache %s: cannot write (%s); fitting without it", root, err)
