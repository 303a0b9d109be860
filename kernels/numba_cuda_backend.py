"""GPU backend written with numba.cuda (works with CuPy arrays, numba device arrays or NumPy input).

Results live where the input lived: NumPy in -> copied back to NumPy; CuPy in -> CuPy out
(zero-copy via ``__cuda_array_interface__``); numba device arrays in -> device arrays out.
Also runs under the numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda

from .ccl_cuda import cavities3_device, label3_device
from .edt_cuda import THREADS, edt3_device
from .euler_cuda import euler3_device
from .validate import as_3d, as_mask, is_cuda_array, is_cupy_array


@dataclass
class DevMask:
    """A C-contiguous uint8 ``(Z, Y, X)`` device mask plus where the caller's array lived."""

    arr: Any
    kind: str  # "numpy", "cupy" or "device"


@cuda.jit
def _to_mask3(src, dst):
    i = cuda.grid(1)
    Z, Y, X = dst.shape
    if i < Z * Y * X:
        x = i % X
        r = i // X
        dst[r // Y, r % Y, x] = 1 if src[r // Y, r % Y, x] != 0 else 0


@cuda.jit
def _to_mask2(src, dst):
    i = cuda.grid(1)
    _, Y, X = dst.shape
    if i < Y * X:
        dst[0, i // X, i % X] = 1 if src[i // X, i % X] != 0 else 0


@cuda.jit
def _signed(mask, d_in, d_out, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = -d_in[i] if mask[i] != 0 else d_out[i]


@cuda.jit
def _invert(mask, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 1 if mask[i] == 0 else 0


@cuda.jit
def _equal(labels, value, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 1 if labels[i] == value else 0


def _blocks(n: int) -> int:
    return max(1, (n + THREADS - 1) // THREADS)


def as_mask3(mask: Any) -> DevMask:
    if not is_cuda_array(mask):
        return DevMask(cuda.to_device(as_3d(as_mask(mask))), "numpy")
    kind = "cupy" if is_cupy_array(mask) else "device"
    src = cuda.as_cuda_array(mask)
    shape3 = tuple(src.shape) if src.ndim == 3 else (1, *src.shape)
    dst = cuda.device_array(shape3, np.uint8)
    n = int(np.prod(shape3))
    if n:
        (_to_mask3 if src.ndim == 3 else _to_mask2)[_blocks(n), THREADS](src, dst)
    return DevMask(dst, kind)


def _out(dev: Any, kind: str) -> Any:
    if kind == "numpy":
        return dev.copy_to_host()
    if kind == "cupy":
        import cupy

        return cupy.asarray(dev)
    return dev


def edt3(m: DevMask, spacing3: tuple[float, float, float]) -> Any:
    return _out(edt3_device(m.arr, spacing3), m.kind)


def signed3(m: DevMask, spacing3: tuple[float, float, float]) -> Any:
    n = m.arr.size
    inv = cuda.device_array(m.arr.shape, np.uint8)
    if n:
        _invert[_blocks(n), THREADS](m.arr.reshape(n), inv.reshape(n))
    d_in = edt3_device(m.arr, spacing3)
    d_out = edt3_device(inv, spacing3)
    out = cuda.device_array(m.arr.shape, np.float32)
    if n:
        _signed[_blocks(n), THREADS](m.arr.reshape(n), d_in.reshape(n), d_out.reshape(n), out.reshape(n))
    return _out(out, m.kind)


def label3(m: DevMask, connectivity: int, invert: bool = False) -> tuple[Any, int]:
    labels, count = label3_device(m.arr, connectivity, invert)
    return _out(labels, m.kind), count


def count3(m: DevMask, connectivity: int) -> int:
    return label3_device(m.arr, connectivity)[1]


def euler3(m: DevMask, connectivity: int) -> int:
    return euler3_device(m.arr, connectivity)


def cavities3(m: DevMask, connectivity: int, planar: bool) -> int:
    return cavities3_device(m.arr, connectivity, planar)


def max_label(labels: Any) -> int:
    if is_cupy_array(labels):
        return int(labels.max()) if labels.size else 0
    host = cuda.as_cuda_array(labels).copy_to_host()
    return int(host.max(initial=0))


def equal_mask(labels: Any, value: int) -> Any:
    """``labels == value`` as a uint8 device array of the same shape (stays on the GPU)."""
    src = cuda.as_cuda_array(labels)
    if not src.is_c_contiguous():
        if is_cupy_array(labels):
            import cupy

            src = cuda.as_cuda_array(cupy.ascontiguousarray(labels))
        else:
            src = cuda.to_device(src.copy_to_host())
    n = src.size
    out = cuda.device_array(src.shape, np.uint8)
    if n:
        _equal[_blocks(n), THREADS](src.reshape(n), value, out.reshape(n))
    return out
