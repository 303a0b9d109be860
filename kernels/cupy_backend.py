"""GPU backend on CuPy: the CUDA C kernels in ``edt.cu``, ``ccl.cu`` and ``euler.cu``.

The sources ship inside the package and are compiled once per process by ``cupy.RawModule``
(NVRTC; CuPy caches the binaries on disk). Arrays stay on the device from input to output: CuPy
in, CuPy out, and only scalar results (component counts, Euler sums) are copied to the host. The
volume is processed at its own shape, never padded to a cube; "padding" for Euler and cavity
counts is virtual (bounds checks in the kernels). NumPy input is accepted for convenience and
comes back as NumPy.

The kernels mirror the numba.cuda ones (``edt_cuda``, ``ccl_cuda``, ``euler_cuda``) line for line,
and those are tested against the CPU backend under the numba CUDA simulator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .ccl_numba import _BACK6, _BACK18, _BACK26
from .euler_numba import euler_lut
from .validate import as_3d, as_mask, is_cupy_array

THREADS = 128  # euler.cu's shared-memory reduction assumes exactly this block size
CHUNK = 1024  # must match ccl.cu
_TABLES = {6: _BACK6, 18: _BACK18, 26: _BACK26}


def _cupy() -> Any:
    import cupy

    return cupy


@functools.cache
def _module(name: str) -> Any:
    """Compile ``<name>.cu`` from the installed package (cached per process)."""
    src = resources.files(__package__).joinpath(f"{name}.cu").read_text(encoding="utf-8")
    return _cupy().RawModule(code=src, options=("--std=c++14",))


def _fn(module: str, kernel: str) -> Any:
    return _module(module).get_function(kernel)


def _grid(n: int) -> tuple[int]:
    return (max(1, (n + THREADS - 1) // THREADS),)


@dataclass
class DevMask:
    """A C-contiguous uint8 ``(Z, Y, X)`` CuPy mask plus whether the caller passed NumPy."""

    arr: Any
    kind: str  # "numpy" or "cupy"


def as_mask3(mask: Any) -> DevMask:
    cp = _cupy()
    if is_cupy_array(mask):
        m = cp.ascontiguousarray(mask != 0).view(cp.uint8)
        return DevMask(m[None] if m.ndim == 2 else m, "cupy")
    if hasattr(mask, "__cuda_array_interface__"):
        m = cp.ascontiguousarray(cp.asarray(mask) != 0).view(cp.uint8)
        return DevMask(m[None] if m.ndim == 2 else m, "cupy")
    return DevMask(cp.asarray(as_3d(as_mask(mask))), "numpy")


def _out(a: Any, kind: str) -> Any:
    return _cupy().asnumpy(a) if kind == "numpy" else a


def _edt_dev(mask3: Any, spacing3: tuple[float, float, float]) -> Any:
    cp = _cupy()
    Z, Y, X = (int(s) for s in mask3.shape)
    out = cp.empty((Z, Y, X), cp.float32)
    if out.size == 0:
        return out
    _fn("edt", "edt_rows")(_grid(Z * Y), (THREADS,),
                           (mask3, out, np.int32(Z), np.int32(Y), np.int32(X), np.float32(spacing3[2])))
    for axis, n, other in ((1, Y, Z), (0, Z, Y)):
        if n == 1:
            continue
        lines = other * X
        g = cp.empty((n, lines), cp.float64)
        v = cp.empty((n, lines), cp.int32)
        zb = cp.empty((n + 1, lines), cp.float64)
        final = axis == 0 or Z == 1
        _fn("edt", "edt_cols")(_grid(lines), (THREADS,),
                               (out, np.int32(Z), np.int32(Y), np.int32(X), np.int32(axis),
                                np.float64(spacing3[axis] ** 2), np.int32(final), g, v, zb))
    if Z == 1 and Y == 1:
        _fn("edt", "edt_sqrt")(_grid(out.size), (THREADS,), (out, np.int64(out.size)))
    return out


def edt3(m: DevMask, spacing3: tuple[float, float, float]) -> Any:
    return _out(_edt_dev(m.arr, spacing3), m.kind)


def signed3(m: DevMask, spacing3: tuple[float, float, float]) -> Any:
    cp = _cupy()
    d_in = _edt_dev(m.arr, spacing3)
    d_out = _edt_dev((m.arr == 0).view(cp.uint8), spacing3)
    out = cp.empty_like(d_in)
    n = out.size
    if n:
        _fn("edt", "signed_combine")(_grid(n), (THREADS,), (m.arr, d_in, d_out, out, np.int64(n)))
    return _out(out, m.kind)


def _label_dev(mask3: Any, connectivity: int, invert: bool) -> tuple[Any, int]:
    cp = _cupy()
    Z, Y, X = (int(s) for s in mask3.shape)
    n = Z * Y * X
    out = cp.zeros((Z, Y, X), cp.int32)
    if n == 0:
        return out, 0
    back = cp.asarray(_TABLES[connectivity].astype(np.int32).ravel())
    L = cp.empty(n, cp.int32)
    n64, inv = np.int64(n), np.int32(invert)
    _fn("ccl", "ccl_init")(_grid(n), (THREADS,), (mask3, inv, L, n64))
    _fn("ccl", "ccl_merge")(_grid(n), (THREADS,),
                            (mask3, np.int32(Z), np.int32(Y), np.int32(X), inv, back,
                             np.int32(len(_TABLES[connectivity])), L))
    _fn("ccl", "ccl_flatten")(_grid(n), (THREADS,), (L, n64))
    nchunks = (n + CHUNK - 1) // CHUNK
    counts = cp.empty(nchunks, cp.int32)
    offsets = cp.empty(nchunks + 1, cp.int32)
    _fn("ccl", "ccl_chunk_count")(_grid(nchunks), (THREADS,), (L, n64, counts))
    _fn("ccl", "ccl_scan")((1,), (1,), (counts, np.int64(nchunks), offsets))
    _fn("ccl", "ccl_assign")(_grid(nchunks), (THREADS,), (L, n64, offsets, out))
    _fn("ccl", "ccl_finish")(_grid(n), (THREADS,), (L, n64, out))
    return out, int(offsets[nchunks].get())


def label3(m: DevMask, connectivity: int, invert: bool = False) -> tuple[Any, int]:
    labels, count = _label_dev(m.arr, connectivity, invert)
    return _out(labels, m.kind), count


def count3(m: DevMask, connectivity: int) -> int:
    return _label_dev(m.arr, connectivity, False)[1]


def cavities3(m: DevMask, connectivity: int, planar: bool) -> int:
    cp = _cupy()
    labels, count = _label_dev(m.arr, connectivity, True)
    if count == 0:
        return 0
    Z, Y, X = (int(s) for s in labels.shape)
    touching = cp.zeros(count + 1, cp.int32)
    _fn("ccl", "ccl_border")(_grid(labels.size), (THREADS,),
                             (labels, np.int32(Z), np.int32(Y), np.int32(X), np.int32(planar), touching))
    acc = cp.zeros(1, cp.uint64)
    _fn("ccl", "count_nonzero")(_grid(count + 1), (THREADS,), (touching, np.int64(count + 1), acc))
    return count - int(acc.get()[0])


def euler3(m: DevMask, connectivity: int) -> int:
    cp = _cupy()
    Z, Y, X = (int(s) for s in m.arr.shape)
    if Z * Y * X == 0:
        return 0
    lut = cp.asarray(euler_lut(connectivity))
    acc = cp.zeros(1, cp.uint64)
    nblk = (Z + 1) * (Y + 1) * (X + 1)
    blocks = min(1024, (nblk + THREADS - 1) // THREADS)
    _fn("euler", "euler_lut_sum")((blocks,), (THREADS,),
                                  (m.arr, np.int32(Z), np.int32(Y), np.int32(X), lut, acc))
    total = int(acc.get()[0].astype(np.int64))  # two's complement back to a signed sum
    return total // 8


def max_label(labels: Any) -> int:
    cp = _cupy()
    arr = cp.asarray(labels)
    return int(arr.max()) if arr.size else 0


def equal_mask(labels: Any, value: int) -> Any:
    cp = _cupy()
    return (cp.asarray(labels) == value).view(cp.uint8)
