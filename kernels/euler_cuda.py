"""Euler characteristic as a numba.cuda kernel: one 2x2x2 block per thread, LUT, reduction.

Same tables and block convention as ``euler_numba`` (including the virtual background padding:
block origins run from -1 to size-1 on every axis). Each thread sums its blocks over a grid-stride
loop, the block reduces in shared memory and adds once to a global int64 accumulator.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int64

from .euler_numba import euler_lut

THREADS = 128
MAX_BLOCKS = 1024


@cuda.jit
def euler_kernel(mask, lut, acc):
    Z, Y, X = mask.shape
    nblk = (Z + 1) * (Y + 1) * (X + 1)
    part = cuda.shared.array(THREADS, int64)
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    local = 0
    while t < nblk:
        x0 = t % (X + 1) - 1
        r = t // (X + 1)
        y0 = r % (Y + 1) - 1
        z0 = r // (Y + 1) - 1
        idx = 0
        for dz in range(2):
            z = z0 + dz
            if z < 0 or z >= Z:
                continue
            for dy in range(2):
                y = y0 + dy
                if y < 0 or y >= Y:
                    continue
                for dx in range(2):
                    x = x0 + dx
                    if x >= 0 and x < X and mask[z, y, x] != 0:
                        idx |= 1 << (dx * 4 + dz * 2 + dy)
        local += lut[idx]
        t += stride
    tid = cuda.threadIdx.x
    part[tid] = local
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.add(acc, 0, part[0])


_dev_luts: dict[int, object] = {}


def euler3_device(mask3, connectivity: int) -> int:
    """Euler characteristic of a C-contiguous uint8 device volume."""
    Z, Y, X = mask3.shape
    if Z * Y * X == 0:
        return 0
    if connectivity not in _dev_luts:
        _dev_luts[connectivity] = cuda.to_device(euler_lut(connectivity))
    acc = cuda.to_device(np.zeros(1, np.int64))
    nblk = (Z + 1) * (Y + 1) * (X + 1)
    blocks = min(MAX_BLOCKS, (nblk + THREADS - 1) // THREADS)
    euler_kernel[blocks, THREADS](mask3, _dev_luts[connectivity], acc)
    return int(acc.copy_to_host()[0]) // 8
