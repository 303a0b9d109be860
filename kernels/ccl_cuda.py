"""Connected components as numba.cuda kernels: union-find with atomic-min linking.

Steps (Playne & Hawick style union-find on a global equivalence array ``L``):

1. ``init``: ``L[i] = i`` for foreground voxels, ``-1`` for background.
2. ``merge``: every foreground voxel unions itself with each foreground *backward* neighbour.
   ``union`` finds both roots and hangs the larger under the smaller with ``atomic.min``; if
   another thread changed that root meanwhile the returned old value tells us so and we retry
   from there. Roots therefore stay the smallest index of their tree, as on the CPU.
3. ``flatten``: ``L[i] = find(L, i)``.
4. consecutive labels in raster order (the CPU/scipy numbering): per-chunk root counts, one
   exclusive scan over chunks, per-chunk numbering of roots, then every voxel copies its root's
   label. Only the final count (one integer) leaves the device.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .ccl_numba import _BACK6, _BACK18, _BACK26

THREADS = 128
CHUNK = 1024


@cuda.jit(device=True)
def _find(L, i):
    p = L[i]
    while p != i:
        i = p
        p = L[i]
    return i


@cuda.jit(device=True)
def _union(L, a, b):
    done = False
    while not done:
        a = _find(L, a)
        b = _find(L, b)
        if a < b:
            old = cuda.atomic.min(L, b, a)
            done = old == b
            b = old
        elif b < a:
            old = cuda.atomic.min(L, a, b)
            done = old == a
            a = old
        else:
            done = True


@cuda.jit
def init_kernel(mask, invert, L):
    i = cuda.grid(1)
    if i < mask.size:  # mask arrives flattened
        fg = (mask[i] != 0) != invert
        L[i] = i if fg else -1


@cuda.jit
def merge_kernel(mask, invert, back, L):
    Z, Y, X = mask.shape
    i = cuda.grid(1)
    if i >= Z * Y * X or L[i] < 0:
        return
    x = i % X
    r = i // X
    y = r % Y
    z = r // Y
    for k in range(back.shape[0]):
        zz = z + back[k, 0]
        yy = y + back[k, 1]
        xx = x + back[k, 2]
        if zz < 0 or yy < 0 or yy >= Y or xx < 0 or xx >= X:
            continue
        if (mask[zz, yy, xx] != 0) != invert:
            _union(L, i, (zz * Y + yy) * X + xx)


@cuda.jit
def flatten_kernel(L):
    i = cuda.grid(1)
    if i < L.size and L[i] >= 0:
        L[i] = _find(L, i)


@cuda.jit
def chunk_count_kernel(L, counts):
    c = cuda.grid(1)
    start = c * CHUNK
    if start >= L.size:
        return
    n = 0
    for i in range(start, min(L.size, start + CHUNK)):
        if L[i] == i:
            n += 1
    counts[c] = n


@cuda.jit
def scan_kernel(counts, offsets):
    if cuda.grid(1) != 0:
        return
    acc = 0
    for c in range(counts.size):
        offsets[c] = acc
        acc += counts[c]
    offsets[counts.size] = acc


@cuda.jit
def assign_kernel(L, offsets, out):
    c = cuda.grid(1)
    start = c * CHUNK
    if start >= L.size:
        return
    lab = offsets[c]
    for i in range(start, min(L.size, start + CHUNK)):
        if L[i] == i:
            lab += 1
            out[i] = lab


@cuda.jit
def finish_kernel(L, out):
    i = cuda.grid(1)
    if i < L.size:
        p = L[i]
        if p < 0:
            out[i] = 0
        elif p != i:
            out[i] = out[p]


@cuda.jit
def border_kernel(labels, planar, touching):
    Z, Y, X = labels.shape
    i = cuda.grid(1)
    if i >= Z * Y * X:
        return
    x = i % X
    r = i // X
    y = r % Y
    z = r // Y
    lab = labels[z, y, x]
    if lab == 0:
        return
    on = x == 0 or x == X - 1 or y == 0 or y == Y - 1
    if not planar and (z == 0 or z == Z - 1):
        on = True
    if on:
        touching[lab] = 1


@cuda.jit
def sum_kernel(a, acc):
    i = cuda.grid(1)
    if i < a.size and a[i] != 0:
        cuda.atomic.add(acc, 0, 1)


_TABLES = {6: _BACK6, 18: _BACK18, 26: _BACK26}
_dev_tables: dict[int, object] = {}


def _blocks(n: int) -> int:
    return max(1, (n + THREADS - 1) // THREADS)


def label3_device(mask3, connectivity: int, invert: bool = False):
    """Label a C-contiguous uint8 device volume; returns ``(int32 device labels, count)``."""
    shape = mask3.shape
    n = int(np.prod(shape))
    out = cuda.device_array(shape, np.int32)
    if n == 0:
        return out, 0
    if connectivity not in _dev_tables:
        _dev_tables[connectivity] = cuda.to_device(_TABLES[connectivity].astype(np.int32))
    flat_mask = mask3.reshape(n)
    L = cuda.device_array(n, np.int32)
    init_kernel[_blocks(n), THREADS](flat_mask, invert, L)
    merge_kernel[_blocks(n), THREADS](mask3, invert, _dev_tables[connectivity], L)
    flatten_kernel[_blocks(n), THREADS](L)
    nchunks = (n + CHUNK - 1) // CHUNK
    counts = cuda.device_array(nchunks, np.int32)
    offsets = cuda.device_array(nchunks + 1, np.int32)
    chunk_count_kernel[_blocks(nchunks), THREADS](L, counts)
    scan_kernel[1, 1](counts, offsets)
    flat_out = out.reshape(n)
    assign_kernel[_blocks(nchunks), THREADS](L, offsets, flat_out)
    finish_kernel[_blocks(n), THREADS](L, flat_out)
    count = int(offsets[nchunks : nchunks + 1].copy_to_host()[0])
    return out, count


def cavities3_device(mask3, connectivity: int, planar: bool) -> int:
    """Components of the complement that do not touch the border (see ``backends``)."""
    labels, count = label3_device(mask3, connectivity, invert=True)
    if count == 0:
        return 0
    touching = cuda.to_device(np.zeros(count + 1, np.int32))
    n = labels.size
    border_kernel[_blocks(n), THREADS](labels, planar, touching)
    acc = cuda.to_device(np.zeros(1, np.int64))
    sum_kernel[_blocks(count + 1), THREADS](touching, acc)
    return count - int(acc.copy_to_host()[0])
