"""Speed settings shared by the trainer, feature extraction and the benchmarks.

Every choice here was measured on a 2-core AMD EPYC (Zen 4: AVX-512 with ``avx512_bf16``, no AMX), glibc
2.36, torch 2.14, EfficientNet-B0 at 224 px, batch 40 (``benchmarks/throughput.py`` prints current figures):

* :func:`tune_malloc` — the largest CPU win (feature extraction ~2.9x, training ~1.7x over an untuned
  loop). glibc serves every multi-MiB activation with ``mmap`` and returns freed heap memory to the OS, so
  each step page-faults its activations in again (half the CPU time went to the kernel). ``mallopt`` at
  run time works as well as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_``
  set before Python starts, so no re-exec is needed. Cost: the process keeps its peak memory (B0 training
  at batch 40: peak RSS ~6.2 GiB instead of ~4.8 GiB; inference unchanged, ~1.5 GiB).
* :func:`use_channels_last` — NHWC convolutions (oneDNN on CPU): ~1.25x inference, ~1.4x training.
* :func:`optimize_for_inference` — batch norm folded into the convolutions: ~1.1x inference.
* :func:`autocast_dtype` — bf16 on this CPU: inference ~1.4x faster (features ~1e-2 relative difference),
  training ~25% *slower*; so CPU training uses bf16 only with AMX, and feature extraction only on request.
  CUDA: bf16 where supported, else fp16 with a ``GradScaler``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import random
import sys
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "autocast_context",
    "autocast_dtype",
    "configure_threads",
    "cpu_flags",
    "default_num_threads",
    "make_grad_scaler",
    "malloc_tuned",
    "optimize_for_inference",
    "select_device",
    "set_seed",
    "tune_malloc",
    "use_channels_last",
]

_AUTO = "auto"

# --------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str | torch.device | None = _AUTO) -> torch.device:
    """``"auto"`` (or ``None``): CUDA if available, else Apple MPS, else CPU. Otherwise the named device,
    checked: asking for ``"cuda"`` on a machine without a GPU raises ``ValueError`` saying so."""
    if device is None or (isinstance(device, str) and device.strip().lower() == _AUTO):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if chosen.type == "mps" and not _mps_available():
        raise ValueError(f"device={device!r} but Apple MPS is not available here; use device='auto' or 'cpu'")
    if chosen.type not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"device={device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return chosen


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty set where it cannot be read, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _check_auto_bool(name: str, value) -> None:
    if not (value == _AUTO or isinstance(value, bool)):
        raise ValueError(f"{name}={value!r}; expected 'auto', True or False")


def use_channels_last(device: str | torch.device, setting: bool | str = _AUTO) -> bool:
    """Whether to run convolutions in ``torch.channels_last`` (NHWC) memory format.

    ``"auto"``: on CUDA and CPU (EfficientNet-B0 on a Zen 4 CPU: ~1.25x inference, ~1.4x training);
    off on MPS, where NHWC convolutions have been slower and less tested. ``True``/``False`` force it.
    """
    _check_auto_bool("channels_last", setting)
    if isinstance(setting, bool):
        return setting
    return torch.device(device).type in {"cpu", "cuda"}


# --------------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------------


def _cuda_native_bf16(device: torch.device) -> bool:
    # Compute capability 8.0+ (Ampere) has bf16 tensor cores. ``torch.cuda.is_bf16_supported()`` also
    # answers True on a T4 (7.5), where bf16 is only emulated and slow: fp16 + GradScaler is right there.
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


def autocast_dtype(
    device: str | torch.device, enabled: bool | str = _AUTO, training: bool = True
) -> torch.dtype | None:
    """The autocast dtype to use on ``device``, or ``None`` for plain fp32.

    * CUDA: ``torch.bfloat16`` on GPUs with native bf16 (compute capability 8.0+, Ampere and newer; no
      loss scaling needed), else ``torch.float16`` (T4, V100; use :func:`make_grad_scaler` when training).
    * CPU, ``"auto"``: bf16 needs hardware support. For training it is used only with AMX (``amx_bf16``,
      Sapphire Rapids and newer; expected faster there, not measured): with AVX-512-BF16 alone (Zen 4) a
      B0 training step measured ~25% *slower* in bf16 than in fp32. For inference (``training=False``) AVX-512-BF16 is
      enough: B0 feature extraction measured ~1.4x faster. CPUs without either emulate bf16: off.
      ``enabled=True`` forces bf16 on any CPU.
    * MPS: off for ``"auto"`` (autocast on MPS is recent and op coverage uneven); ``True`` gives fp16.
    """
    _check_auto_bool("amp", enabled)
    if enabled is False:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if _cuda_native_bf16(torch.device(device)) else torch.float16
    if kind == "cpu":
        flags = cpu_flags()
        fast = "amx_bf16" in flags or (not training and "avx512_bf16" in flags)
        return torch.bfloat16 if enabled is True or fast else None
    if kind == "mps":
        return torch.float16 if enabled is True else None
    return None


def autocast_context(device: str | torch.device, enabled: bool | str = _AUTO, training: bool = True):
    """``torch.autocast`` for ``device`` with :func:`autocast_dtype`'s choice, or a no-op context."""
    dtype = autocast_dtype(device, enabled, training)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def make_grad_scaler(device: str | torch.device, dtype: torch.dtype | None):
    """A ``torch.amp.GradScaler`` when training in fp16 on CUDA (gradients would underflow), else ``None``."""
    if dtype is torch.float16 and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# --------------------------------------------------------------------------------------------------
# glibc malloc
# --------------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_malloc_state: dict | None = None


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # musl (Alpine) and other C libraries: nothing to tune
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


def malloc_tuned() -> dict | None:
    """What :func:`tune_malloc` did in this process (``None`` if it has not run or could not run)."""
    return None if _malloc_state is None else dict(_malloc_state)


def tune_malloc(
    mmap_threshold: int = 1 << 30,
    trim_threshold: int = _INT_MAX,
    top_pad: int = 1 << 30,
) -> bool:
    """Keep freed activation memory in the process instead of returning it to the OS (glibc only).

    Calls ``mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD)``: blocks up to ``mmap_threshold``
    come from the heap, the heap is only trimmed above ``trim_threshold`` of free memory at its top,
    and it grows ``top_pad`` bytes at a time. Older glibc releases refuse an mmap threshold above
    32 MiB (``HEAP_MAX_SIZE / 2``) through ``mallopt``; there ``M_MMAP_MAX = 0`` (no ``mmap`` for the main
    heap) is used instead, measured as fast. The process keeps its peak memory (it does not shrink
    after a large batch): about +1.4 GiB for B0 training at batch 40 on the CPU.

    Returns ``True`` if the settings are in effect (now or from an earlier call: it is idempotent),
    ``False`` where there is nothing to tune (macOS, Windows, musl). Setting ``ALLKIT_TUNE_MALLOC=0``
    in the environment turns it off. The result is recorded in :func:`malloc_tuned`.
    """
    global _malloc_state
    if _malloc_state is not None:
        return _malloc_state["applied"]
    if os.environ.get("ALLKIT_TUNE_MALLOC", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    libc = _libc()
    if libc is None:
        _malloc_state = {"applied": False, "reason": f"no glibc on {platform.system()}"}
        return False
    mmap_threshold = min(int(mmap_threshold), _INT_MAX)
    trim_threshold = min(int(trim_threshold), _INT_MAX)
    top_pad = min(int(top_pad), _INT_MAX)
    state = {"applied": True, "glibc": libc.gnu_get_libc_version().decode(), "trim_threshold": trim_threshold,
             "top_pad": top_pad}
    if libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1:
        state["mmap_threshold"] = mmap_threshold
    else:  # glibc < 2.35 caps the threshold at 32 MiB: stop mmap for the heap altogether instead
        state["mmap_max"] = 0 if libc.mallopt(_M_MMAP_MAX, 0) == 1 else None
        state["applied"] = state["mmap_max"] == 0
    state["applied"] &= libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    libc.mallopt(_M_TOP_PAD, top_pad)
    _malloc_state = state
    return state["applied"]


# --------------------------------------------------------------------------------------------------
# Threads, seeds
# --------------------------------------------------------------------------------------------------


def _cgroup_cpu_limit() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = handle.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return None


def default_num_threads() -> int:
    """PyTorch's own default, lowered to the CPUs this process may actually use (affinity mask and a
    container's CPU quota), so a container limited to 2 CPUs on a 64-core host does not run 32 threads."""
    limits = [torch.get_num_threads()]
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    quota = _cgroup_cpu_limit()
    if quota is not None:
        limits.append(quota)
    return max(1, min(limits))


def configure_threads(num_threads: int | None = None) -> int:
    """Set ``torch.set_num_threads`` (``None``: :func:`default_num_threads`, unless the user set
    ``OMP_NUM_THREADS``, which is then respected). Returns the number in use."""
    if num_threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        num_threads = default_num_threads()
    if int(num_threads) < 1:
        raise ValueError(f"num_threads={num_threads!r}; expected a positive integer")
    if torch.get_num_threads() != int(num_threads):
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` for the ``with`` block, the previous number restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and all GPUs)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Inference graph
# --------------------------------------------------------------------------------------------------


def optimize_for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` (eval mode) with each ``BatchNorm2d`` folded into the convolution before it.

    Results equal the original's up to float rounding (about 1e-6 relative); ~1.1x faster on CPU for
    EfficientNet-B0. The original is untouched. Modules that ``torch.fx`` cannot trace come back as an
    unfused eval-mode copy; a module that cannot be deep-copied comes back as itself (unchanged).
    """
    import copy

    try:
        model = copy.deepcopy(module)
    except Exception:  # e.g. hooks holding un-copyable objects
        return module
    model.eval()
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model, inplace=True)
    except Exception:  # tracing fails on data-dependent control flow: keep the unfused copy
        return model
