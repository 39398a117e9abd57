"""Torch settings every part shares: one intra-op thread, machine-independent kernels, the device.

One home for all three, used by forecasting and training (``gfm.forecast``, ``gfm.training``),
the recording of runs (``gfm.data.generate``) and the learned baselines.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "DEVICES",
    "kernel_env",
    "kernels_pinned",
    "one_thread",
    "pin_kernels",
    "pinned_environ",
    "reproducible",
    "resolve_device",
]

DEVICES = ("cpu", "cuda", "auto")

# Kernels whose float results are the same on every x86-64 CPU with AVX2. Without them the
# same run recorded different bits on machines of different CPU generations (measured on the
# tiny dataset by limiting each library to AVX2 on an AVX-512 machine: torch's own kernels
# changed the digits and MNIST runs, MKL's matrix products every run, oneDNN's convolutions
# the MNIST runs):
#   ATEN_CPU_CAPABILITY  torch's vectorised kernels (reductions in the losses, normal_ fills)
#                        use AVX2 code on every machine instead of the widest the CPU has;
#   MKL_CBWR             MKL's conditional numerical reproducibility: its AVX2 code path, and
#                        STRICT so that a product does not depend on the operands' alignment;
# and ``reproducible`` turns oneDNN off, so convolutions run as im2col + an MKL product (oneDNN
# picks kernels and blockings by ISA and cache sizes). Both variables are read once per
# process, at the first kernel call: they must be set before it (``pin_kernels`` at an entry
# point, or in the environment of a worker process, ``pinned_environ``).
_X86_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():  # not Linux: x86-64 CPUs of the last decade all have AVX2
        return True
    return " avx2" in cpuinfo.read_text(errors="ignore")


def kernel_env() -> dict[str, str]:
    """Environment variables that give a worker process machine-independent results.

    On x86-64 with AVX2: torch and MKL on their AVX2 code paths (``ATEN_CPU_CAPABILITY``,
    ``MKL_CBWR``), and one OpenMP/MKL thread. Elsewhere (ARM, ...) only the thread count:
    results then agree between runs on one machine and between machines of one kind.
    """
    return {**(_X86_KERNELS if _has_avx2() else {}), **_ONE_THREAD}


def pin_kernels() -> bool:
    """Pin this process to ``kernel_env``'s kernels, if no kernel has run yet; say whether it is.

    Call it at an entry point (the ``gfm`` command does) before any tensor op. It sets only
    the kernel variables (not the thread counts, which ``one_thread`` sets where it matters)
    and leaves a process whose kernels are already chosen as it is.
    """
    for name, value in kernel_env().items():
        if name not in _ONE_THREAD:
            os.environ[name] = value
    return kernels_pinned()


def kernels_pinned() -> bool:
    """Whether this process computes with ``kernel_env``'s kernels (always true off x86-64)."""
    wanted = {k: v for k, v in kernel_env().items() if k not in _ONE_THREAD}
    if not wanted:
        return True
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        return False
    return torch.backends.cpu.get_cpu_capability() == wanted["ATEN_CPU_CAPABILITY"].upper()


@contextmanager
def pinned_environ() -> Iterator[None]:
    """``kernel_env`` in ``os.environ`` inside the block: processes started in it inherit it."""
    before = {k: os.environ.get(k) for k in kernel_env()}
    os.environ.update(kernel_env())
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread inside the block, restoring the setting after.

    Two reasons. Speed: GFM's ops are small (a parameter chunk × K per ODE stage), so a second
    thread costs more in synchronisation than it saves, and on a shared machine a waiting
    thread makes every op wait (measured 25× slower training with two threads on two busy
    cores). Reproducibility: float reductions split over threads can round differently, so one
    thread everywhere is what makes a recorded run bit-identical inline and in a worker process.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def reproducible() -> Iterator[None]:
    """``one_thread`` with oneDNN off: results that depend only on the kernels (``pin_kernels``).

    Convolutions then run as im2col + an MKL matrix product instead of a oneDNN kernel chosen
    by the CPU's ISA and cache sizes (about 2× slower for the small MNIST CNN, measured).
    """
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with one_thread():
            yield
    finally:
        torch.backends.mkldnn.enabled = before


def resolve_device(name: str) -> torch.device:
    """The torch device for a settings value: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        ValueError: an unknown name, or ``cuda`` on a machine without CUDA.
    """
    if name not in DEVICES:
        raise ValueError(f"`device` must be one of {list(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` must be 'cpu' or 'auto' on this machine (no CUDA), got 'cuda'")
    return torch.device(name)
