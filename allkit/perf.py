"""Process settings that make CPU training and inference faster; applied by the entry points (the CLI, the
book's setup, the study's runs), never by the core.

:func:`tune_malloc` is the one that earns its lines (``benchmarks/throughput.py``, Lite0, 2-core Zen 4,
before/after in the README): glibc serves each multi-MiB activation with ``mmap`` and hands freed memory
back to the OS, so every step page-faults its activations in again; keeping them in the heap made feature
extraction ~2x and training ~1.6x faster. Cost: the process keeps its peak memory.
"""

import contextlib
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import torch

_applied: dict | None = None


def tune_malloc(mmap_threshold: int = 1 << 30, top_pad: int = 1 << 30) -> bool:
    """``mallopt`` so that freed activation memory stays in the process (glibc only; idempotent).
    ``ALLKIT_TUNE_MALLOC=0`` turns it off. Returns whether the settings are in effect."""
    global _applied
    if _applied is not None:
        return _applied["applied"]
    if os.environ.get("ALLKIT_TUNE_MALLOC", "1").lower() in ("0", "false", "no", "off") or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        return False  # musl and other C libraries: nothing to tune
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_mmap_max = -1, -2, -3, -4
    applied = libc.mallopt(m_mmap_threshold, mmap_threshold) == 1 or libc.mallopt(m_mmap_max, 0) == 1
    applied &= libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    libc.mallopt(m_top_pad, top_pad)
    _applied = {"applied": bool(applied), "glibc": version}
    return _applied["applied"]


def configure_threads() -> int:
    """Torch threads = the CPUs this process may use (affinity and a container's CPU quota), unless
    ``OMP_NUM_THREADS`` says otherwise: a container limited to 2 CPUs on a 64-core host should not run 32."""
    if not os.environ.get("OMP_NUM_THREADS"):
        limits = [torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1024]
        with contextlib.suppress(OSError, ValueError):
            quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
            limits.append(max(1, int(quota) // int(period)) if quota != "max" else 1024)
        torch.set_num_threads(max(1, min(limits)))
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` inside the ``with`` block."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def speed_up() -> None:
    """What every entry point calls once: :func:`tune_malloc` and :func:`configure_threads`."""
    tune_malloc()
    configure_threads()
