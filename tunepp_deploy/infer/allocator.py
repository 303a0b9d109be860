"""Keep the MC engine's large per-call buffers out of fresh zero-filled pages.

**Why.** On the phantom workload one head call makes ``[25, 5, 48, 48, 32]`` float32 tensors
(36.9 MB) and the network's activations are larger still. glibc serves every allocation above its
mmap threshold (dynamic, but never above 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` on free, so each such temporary costs ~9 000 minor page faults (4 KiB pages, zero-filled
by the kernel) *every call* — measured 4.9 M faults per MC-25 run, ~218 k per runner call, most of
the time of the engine's non-network stages (docs/inference.md, "Page faults").

Two remedies, both here, both measured:

* :class:`Workspace` — named buffers the engine reuses across calls (the sampled softmax's
  scratch, the per-window-batch output). Portable, exact (the same kernels write into them), and
  it removes the engine's own temporaries; it cannot reach inside a runner's graph.
* :func:`tune_malloc` — raise glibc's ``M_MMAP_THRESHOLD`` (and ``M_TRIM_THRESHOLD`` with it) once
  at engine start-up so that blocks up to :data:`MMAP_THRESHOLD` come from the heap and are reused
  after ``free`` instead of being unmapped; this also covers the torch runner's own activations.
  The cost: up to :data:`TRIM_THRESHOLD` of freed memory stays mapped in the process (it is reused
  by the next call, not returned to the OS). Linux glibc only; everywhere else (macOS, Windows,
  musl) it is a no-op and says so. ``TUNEPP_MALLOC_TUNE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
from collections.abc import Sequence

import torch

#: Blocks below this come from glibc's heap (reused after free) instead of a fresh mmap each time.
MMAP_THRESHOLD = 512 * 2**20
#: Freed memory at the top of the heap kept mapped (glibc's own dynamic rule: twice the mmap threshold).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

_state: dict[str, str] = {}


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> str:
    """Set glibc's mmap and trim thresholds once per process; returns what was done, in words.

    Idempotent (the first call decides). A no-op, stated in the returned text, off Linux glibc, when
    ``TUNEPP_MALLOC_TUNE=0``, or when glibc refuses the value (glibc < 2.35 caps the threshold at
    32 MiB, below the engine's buffers: then nothing is changed, so the two settings stay consistent).
    """
    if "result" in _state:
        return _state["result"]
    _state["result"] = result = _tune(int(mmap_threshold), int(trim_threshold))
    return result


def _tune(mmap_threshold: int, trim_threshold: int) -> str:
    if os.environ.get("TUNEPP_MALLOC_TUNE", "1") == "0":
        return "off (TUNEPP_MALLOC_TUNE=0)"
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        return f"no-op (not Linux glibc: {platform.system()} {libc_name or 'unknown libc'})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"no-op (mallopt unavailable: {e})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        return f"no-op (glibc refused M_MMAP_THRESHOLD={mmap_threshold})"
    if not mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        return f"M_MMAP_THRESHOLD={mmap_threshold} set, M_TRIM_THRESHOLD refused"
    return f"M_MMAP_THRESHOLD={mmap_threshold} M_TRIM_THRESHOLD={trim_threshold}"


class Workspace:
    """Named reusable buffers: ``get(name, shape)`` returns a view of the same storage every call
    (grown when a larger shape is asked for), so a hot loop touches its pages once, not per call.

    The contents are undefined on return (like ``torch.empty``). A buffer stays valid until the next
    ``get`` of the same name; the owner (one :func:`~tunepp_deploy.infer.mc.mc_predict` run) drops the
    workspace at its end, so nothing outlives the run.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A contiguous ``shape`` tensor backed by the buffer ``name`` (module docstring)."""
        n = math.prod(int(s) for s in shape)
        key = (name, dtype)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < n:
            self._flat.pop(key, None)  # free the smaller one first: the peak is the larger buffer alone
            flat = self._flat[key] = torch.empty(n, dtype=dtype, device=self.device)
        return flat[:n].view(*(int(s) for s in shape))

    def clear(self) -> None:
        """Drop every buffer (views handed out keep their storage alive until they go)."""
        self._flat.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(t.numel() * t.element_size() for t in self._flat.values())


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "Workspace", "tune_malloc"]
